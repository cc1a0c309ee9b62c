"""How big and how long each measurement is: the full run (`make bench`) and the CI smoke."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    hop_round_trips: int = 3000
    warm_up_s: float = 2.0  # each stack's unmeasured first calls (0: none)
    load_start_delay_s: float = 1.5  # bench.loadgen.START_DELAY_S: shards import and get ready
    window0_throughput: bool = True  # window 0 (BOT_QUIET_MS=0): the largest throughput run too
    # HTTP floor and pipeline: (callers, think s) per latency run, and each run's length
    latency_callers: tuple[int, ...] = (1, 50, 200)
    one_caller_think_s: float = 0.1  # more samples at no load; every other caller thinks 1 s
    think_s: float = 1.0
    latency_duration_s: float = 20.0
    throughput_callers: tuple[int, ...] = (50, 200)
    throughput_shards: tuple[int, ...] = (1, 2)
    throughput_duration_s: float = 12.0
    throughput_warmup_s: float = 3.0
    # holding: a turn every ~8 s per call (1 s bot + 7 s think), steps in units of tps * 8
    hold_period_s: float = 8.0
    hold_bot_ms: int = 1000
    hold_duration_s: float = 20.0
    # finer near the target (0.8): the first step with a miss ends the run
    hold_steps: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 1.0, 1.2, 1.6)
    hold_cap: int = 3000  # file descriptors, memory and time on a 2-core box
    hold_calls_per_shard: int = 800
    # scaling: slow bot, few slots per worker, offered load far above one worker
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_bot_ms: int = 1000
    scale_concurrency: int = 8
    scale_callers: int = 64
    scale_duration_s: float = 20.0
    scale_warmup_s: float = 8.0
    scale_deadline_ms: int = 12000
    # deadline precision: the bot is always later than the deadline
    late_deadline_ms: int = 500
    late_bot_ms: int = 1500
    late_callers: int = 20
    late_duration_s: float = 15.0
    # bot mix: one caller, default settings, each bot on a fresh stack with no warm-up (its
    # first turns are the ones the learned quiet window learns from: reported apart)
    mix_think_s: float = 0.1
    mix_duration_s: float = 20.0
    mix_two_duration_s: float = 45.0  # more turns for the two-message bot's share
    mix_learn_turns: int = 30
    # relay_mix's interrupts: callers cutting in after a reply's first token, thinking about as
    # long as the reply they hear out takes to speak (13 words at 2.5 words/s)
    interrupt_callers: int = 8
    interrupt_think_s: float = 4.0
    interrupt_duration_s: float = 30.0
    # overload: a slow bot, few slots, offered load in steps of the knee (workers x slots /
    # bot s turns/s); a turn every think + bot s per call, call starts spread over ramp s
    overload_bot_ms: int = 1000
    overload_workers: int = 2  # two, so that one worker's read-ahead must not starve the other
    overload_concurrency: int = 16
    overload_think_s: float = 3.0
    overload_ramp_s: float = 8.0
    overload_duration_s: float = 24.0
    overload_warmup_s: float = 12.0  # goodput window: [warmup, duration]
    overload_steps: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5)
    overload_deadline_ms: int = 0  # 0: the edge's default REPLY_DEADLINE_MS


FULL = Sizes()

SMOKE = Sizes(
    hop_round_trips=200,
    warm_up_s=0.0,
    load_start_delay_s=0.75,
    window0_throughput=False,
    latency_callers=(1, 10),
    latency_duration_s=3.0,
    throughput_callers=(10,),
    throughput_shards=(1,),
    throughput_duration_s=3.0,
    throughput_warmup_s=1.0,
    hold_period_s=2.0,
    hold_bot_ms=200,
    hold_duration_s=3.0,
    hold_steps=(0.5, 1.0),
    hold_cap=40,
    scale_workers=(1, 2),
    scale_bot_ms=200,
    scale_concurrency=2,
    scale_callers=6,
    scale_duration_s=3.0,
    scale_warmup_s=1.0,
    scale_deadline_ms=5000,
    late_deadline_ms=200,
    late_bot_ms=400,
    late_callers=3,
    late_duration_s=3.0,
    mix_duration_s=2.0,
    mix_two_duration_s=2.5,
    mix_learn_turns=2,
    interrupt_callers=2,
    interrupt_think_s=0.3,
    interrupt_duration_s=2.0,
    overload_bot_ms=200,
    overload_concurrency=4,
    overload_think_s=0.3,
    overload_ramp_s=1.0,
    overload_duration_s=3.0,
    overload_warmup_s=1.5,
    overload_steps=(1.0, 2.0),
    overload_deadline_ms=1000,
)
