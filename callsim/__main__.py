import sys

from callsim.cli import main

sys.exit(main())
