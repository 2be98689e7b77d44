import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the suite imports shapes from run.py
