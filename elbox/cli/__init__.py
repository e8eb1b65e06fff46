"""The ``elbox`` command line."""
