"""``echo``: a test-only job kind, written as any new kind is (docs/ADDING_A_JOB_KIND.md) and
registered from the tests alone: ``spec.py`` (the JobSpec, pure Python) and ``backend.py`` (its job
function and command line). Load it with ``serve --job-module jobkinds_echo.spec`` or
``SPLATBRIDGE_JOB_MODULES=jobkinds_echo.spec`` (with tests/ on PYTHONPATH)."""
