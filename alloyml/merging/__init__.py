"""Model merging on state dicts: linear/soup, task arithmetic, TIES, DARE, SLERP, layer-range stacking
(`slices`, passthrough), a streaming engine over safetensors, mergekit interop, merge search and
MoE-from-experts. A library; never touches the store.

```python
from alloyml.merging import merge
result = merge("merge.yaml", "out/")          # or merge({...}, sources={"base": state_dict, ...})
```
"""

from alloyml.merging.checkpoints import open_checkpoint
from alloyml.merging.config import MergeConfig, load_merge_config
from alloyml.merging.engine import InputModel, MergeResult, merge
from alloyml.merging.registry import get_method, known_methods, merge_method

__all__ = [
    "MergeConfig",
    "InputModel",
    "MergeResult",
    "get_method",
    "known_methods",
    "load_merge_config",
    "merge",
    "merge_method",
    "open_checkpoint",
]
