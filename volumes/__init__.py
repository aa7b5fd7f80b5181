"""MBH-Seg as whole cases: NIfTI volumes in and out (nifti), scoring per case as the challenge does (scoring), a
synthetic raw set to try it on (synthetic)."""
