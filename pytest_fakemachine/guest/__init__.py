"""What runs inside the guest: the test runner (started as a script, not as
this package), the shell on a failure, the terminal side, coverage, the
packing of a kept ``tmp_path``, and ``protocol``, what host and guest say.
Standard library and pytest only: nothing here imports the rest of the package.
"""
