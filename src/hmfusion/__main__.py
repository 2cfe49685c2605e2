"""`python -m hmfusion …` (also what `torchrun -m hmfusion train …` runs)."""

import sys

from hmfusion.apps.cli import main

sys.exit(main())
