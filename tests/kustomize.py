"""A small `kustomize build`, so the deploy tests need neither kustomize nor kubectl.

It implements only the subset deploy/k8s uses, and refuses (RenderError) any kustomization key
beyond it:

- `resources`: files (multi-document YAML) and directories (rendered recursively);
- `components`: directories whose kustomization is `kind: Component`, applied in order to what
  has been rendered so far;
- `patches`, from `path:` or inline `patch:`, either a strategic merge (maps merged key by key,
  lists of named items merged by `name`, anything else replaced; the target defaults to the
  patch's own kind/name) or a JSON 6902 list (`add` / `replace` / `remove`) on a `target`
  matched by `kind` and `name` only;
- `images`: `newName` / `newTag` on containers and initContainers of pod templates;
- `replicas`: `count` by object name;
- `namespace`: set on every namespaced object.

No name prefixes/suffixes, labels, generators, vars or replacements, and no strategic-merge
directives (`$patch`, `$setElementOrder`). Objects come out in input order (kustomize may sort
them by kind): compare renderings by (kind, name), with `by_key`.

tests/test_deploy.py's `test_renderer_agrees_with_kustomize` compares this renderer's output
with the real one (`kustomize build`, else `kubectl kustomize`) for the base and every overlay
whenever one is installed, so the two cannot silently drift apart.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "images",
    "replicas",
    "namespace",
}

Doc = dict[str, Any]


class RenderError(AssertionError):
    """The kustomization uses something this renderer does not implement, or a patch, image
    or replicas entry matches nothing (which kustomize would reject too)."""


def load_yaml_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(path: Path) -> Doc:
    """`path/kustomization.yaml`, checked to use only the supported keys."""
    data: Doc = yaml.safe_load((path / "kustomization.yaml").read_text())
    unsupported = set(data) - SUPPORTED_KEYS
    if unsupported:
        raise RenderError(f"{path}: the test's renderer does not support {unsupported}")
    return data


def matches(doc: Doc, target: dict[str, Any]) -> bool:
    return all(
        (key == "kind" and doc["kind"] == value)
        or (key == "name" and doc["metadata"]["name"] == value)
        for key, value in target.items()
    )


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else value
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        merged = {i["name"]: i for i in base}
        for item in patch:
            merged[item["name"]] = strategic_merge(merged.get(item["name"], {}), item)
        return list(merged.values())
    return patch


def json6902(doc: Doc, ops: list[dict[str, Any]]) -> None:
    """Apply a JSON patch (RFC 6902: add, replace, remove) to `doc` in place."""
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if op["op"] == "replace" and last not in parent:
                    raise RenderError(f"replace of missing {op['path']}")
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise RenderError(f"unsupported JSON patch op {op['op']}")


def apply_patch(docs: list[Doc], base_dir: Path, spec: dict[str, Any]) -> None:
    """One entry of `patches:` (relative paths against base_dir), applied to docs in place."""
    if "path" in spec:
        body = yaml.safe_load((base_dir / spec["path"]).read_text())
    else:
        body = yaml.safe_load(spec["patch"])
    if isinstance(body, list):
        targets = [d for d in docs if matches(d, spec["target"])]
        if not targets:
            raise RenderError(f"JSON patch in {base_dir} matches nothing: {spec['target']}")
        for doc in targets:
            json6902(doc, body)
        return
    target = spec.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    hits = [i for i, d in enumerate(docs) if matches(d, target)]
    if not hits:
        raise RenderError(f"patch in {base_dir} matches nothing: {target}")
    for i in hits:
        docs[i] = strategic_merge(docs[i], {k: v for k, v in body.items() if k != "metadata"})


def split_image(image: str) -> tuple[str, str | None]:
    """("registry:5000/app", "1.2") from "registry:5000/app:1.2"; no tag -> None."""
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, None


def containers(doc: Doc) -> list[dict[str, Any]]:
    """The containers, then the initContainers, of an object's pod template (none: [])."""
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def render(path: Path, inherited: list[Doc] | None = None) -> list[Doc]:
    """kustomize build of the directory `path`. `inherited`: what a Component applies to."""
    k = kustomization(path)
    docs = copy.deepcopy(inherited or [])
    for entry in k.get("resources", []):
        resource = path / entry
        docs += render(resource) if resource.is_dir() else load_yaml_docs(resource)
    for entry in k.get("components", []):
        component = path / entry
        if kustomization(component)["kind"] != "Component":
            raise RenderError(f"{component} is no Component")
        docs = render(component, docs)
    for spec in k.get("patches", []):
        apply_patch(docs, path, spec)
    for image in k.get("images", []):
        for doc in docs:
            for container in containers(doc):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (
                        f":{new_tag}" if new_tag else ""
                    )
    for replicas in k.get("replicas", []):
        hits = [
            d
            for d in docs
            if d["metadata"]["name"] == replicas["name"] and "replicas" in d.get("spec", {})
        ]
        if not hits:
            raise RenderError(f"{path}: replicas for unknown {replicas['name']}")
        for doc in hits:
            doc["spec"]["replicas"] = replicas["count"]
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    return docs


def by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """Rendered objects by (kind, name); a duplicate is an error (kustomize refuses it too)."""
    out: dict[tuple[str, str], Doc] = {}
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in out:
            raise RenderError(f"duplicate {key}")
        out[key] = doc
    return out


def real_kustomize() -> list[str] | None:
    """The command of an installed kustomize (`kustomize build`, else `kubectl kustomize`)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None
