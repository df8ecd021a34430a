"""A custom scheduler for the kit's community-components example: DPM-Solver++, recording its steps.

Loaded like any scheduler, from a pipeline's `scheduler/` subfolder:
`KitRecordingDPMSolverScheduler.from_pretrained(repo, subfolder="scheduler")`.
"""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler


class KitRecordingDPMSolverScheduler(DPMSolverMultistepScheduler):
    """DPMSolverMultistepScheduler that counts the steps it took (proof that this code ran)."""

    steps_taken = 0

    def step(self, *args, **kwargs):
        self.steps_taken += 1
        return super().step(*args, **kwargs)
