"""Collection rules for the doctests in the package."""

import importlib.util

# daskmri.torch needs the optional torch extra; without it its module cannot be imported.
collect_ignore = [] if importlib.util.find_spec("torch") else ["daskmri/torch.py"]
