"""``python -m fastgd.demo``."""
import sys

from .cli import main

sys.exit(main())
