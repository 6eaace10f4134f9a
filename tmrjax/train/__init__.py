"""Training: MoCo v2 (hu2024), losses, CAME, schedules, the data-parallel step."""
