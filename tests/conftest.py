import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing downloads in tests
