"""mricore: the small shared package of the platform.

Geometry-carrying volumes, NIfTI/DICOM I/O, dataset loaders, alignment, preprocessing,
typed config, patient-level splits, metrics, statistics, reports, classifiers and Grad-CAM.
It imports none of `segment`, `ensemble` or `localize`.
"""

__version__ = "0.1.0"
