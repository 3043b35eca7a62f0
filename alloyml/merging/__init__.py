"""Model merging on state dicts: linear/soup, task arithmetic, TIES, DARE, SLERP, a streaming engine over
safetensors, mergekit interop, merge search and MoE-from-experts. A library; never touches the store."""
