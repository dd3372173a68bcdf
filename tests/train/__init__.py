# A package, so that test_checkpoints.py here and in tests/models/ may share their name.
