"""python3 -m reports RESULTS_DIR (from the repository root), or python3 PATH/TO/reports RESULTS_DIR from anywhere."""
import os
import sys

if __package__ in (None, ""):
    # run as a folder (python3 path/to/reports ...): import the package from its parent folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reports.cli import main
else:
    from .cli import main

sys.exit(main())
