"""Running the pipeline: preflight, run and compute slots, schedules, servers, status, failures, timings."""
