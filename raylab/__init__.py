"""raylab: video action-recognition networks trained and searched on Ray."""
