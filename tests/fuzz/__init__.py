"""Fuzzing of the ingestion decoders: shared checks (targets), hypothesis strategies, atheris harnesses
(fuzz_fhir.py, fuzz_wearable.py, fuzz_dicom.py) and their seed corpora (corpus/<decoder>/). See docs/fuzzing.md."""
