"""Source formats, one module each, behind one small interface.

=====================================  =============================================
module                                 what it reads
=====================================  =============================================
:mod:`.dicom_contours`                 one DICOM file per slice, contours in text files
                                       (:class:`~daskmri.Layout`; Sunnybrook's default)
:mod:`.dicom_rtstruct`                 contour kinds from DICOM RTSTRUCT structure sets
                                       (:class:`~daskmri.RTStruct`, part of a Layout)
:mod:`.volumes`                        NIfTI volumes with integer label maps
                                       (:class:`~daskmri.VolumeLayout`; ACDC, M&Ms, MSD)
=====================================  =============================================

Each source has a layout type (a frozen dataclass with ``kinds``, ``label_choices()``,
``label_kind()``, ``to_dict()`` and ``from_dict()``) and two functions:

- ``iter_records(root, *, layout, ..., problems, fs)``: the scan rows, patient by
  patient, reading no pixels (at most a header), with a
  :class:`~daskmri.Problem` appended for whatever cannot become a record;
- ``read(...)``: one unit of work (a slice, or the records of one volume) as the
  image and masks in the dataset's frame (:class:`~daskmri.record.Fitted`).

:mod:`daskmri.layout` picks the source from the layout's type at scan time, and
:func:`daskmri.read_record` from the record at read time. Helpers they share:
:mod:`.walk` (one glob walker for local folders and URLs), :mod:`.names` (the checks
of kind names and patterns), :mod:`.nifti` (NIfTI files and the orientation rule).
"""
