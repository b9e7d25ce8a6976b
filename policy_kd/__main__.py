import sys

from policy_kd.cli import main

sys.exit(main())
