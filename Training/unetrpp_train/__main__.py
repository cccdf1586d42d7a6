"""`python -m unetrpp_train ...`: the `unetrpp-train` command (the Slicer module starts fine-tunes this way)."""

import sys

from unetrpp_train.cli import main

sys.exit(main())
