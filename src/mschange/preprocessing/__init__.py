"""Preprocessing steps of To et al. (section 3.1), one module per step.

Order in the workflow: resample to isotropic voxels, HD-BET skull stripping,
rigid registration of the baseline onto the follow-up, N4 bias correction inside
the brain, and intensity normalisation to [0, 1].
"""
