"""One render across the processes torchrun started: who does what, and how they finish together.

Rank 0, the leader, runs the render exactly as one process does (`generate`): the checks, the face and speech
front-ends, T5, the reference network, every VAE encode and decode, the render directory, resume, progress and the
MP4. The other processes load only the denoising network (Hallo3's transformer, the UNet) and wait for the leader.
When the leader starts a clip it sends the clip's conditioning, and at every step the noisy latents and the guidance
branches; then all processes compute the step together (parallel/cfg.py, parallel/ulysses.py) and the leader goes
on alone with the sampler. At the end the leader sends its result, or its error, so every process returns the same
value or raises the same error and exits with the same status; nothing but the leader writes a file or prints.

A user error is found either before the processes meet (`check_plan` and everything before it run identically on
every process) or by the leader while the others wait for a message, which is then that error: no process is left
waiting. A crash inside a step's collectives ends the leader, and torchrun then stops the others.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import HalloError, InputError
from ..runtime.parallel_plan import ParallelPlan
from .cfg import UNetBranches, branch_velocities
from .groups import Channel, init_groups


class LeaderFailed(RuntimeError):
    """Raised by the other processes when the leader failed with an error that is not a user error (a bug); the
    leader shows its traceback."""

    from_leader = True


def guidance_branches(backbone, settings) -> int:
    """How many guidance branches a step of this render evaluates (1: no guidance to split)."""
    if backbone.family == "hallo3":
        guidance = settings.guidance
        if guidance is not None:
            return 3 + (guidance.reference is not None)
    return 1 if settings.cfg_scale == 1 else 2


def check_plan(backbone, settings, plan: ParallelPlan) -> ParallelPlan:
    """The plan's degrees for this backbone and these settings, or a one-line InputError; no model is loaded and no
    process is contacted, so every process refuses the same way."""
    if not plan.active:
        return plan
    loaders = getattr(getattr(backbone, "models", None), "loaders", None)
    if not isinstance(loaders, dict):
        raise InputError("--parallel renders with the models of a models folder (python -m hallo_core generate), "
                         "not with models handed in from elsewhere")
    heads = None
    if backbone.family == "hallo3":
        if settings.step_cache > 0:
            raise InputError("--step-cache does not combine with --parallel yet; drop one of them")
        if settings.cfg_cache > 0 and plan.cfg:
            raise InputError("--cfg-cache computes one branch in its last steps, which --parallel cfg cannot "
                             "split; drop --cfg-cache or use --parallel ulysses")
        heads = backbone.config.num_attention_heads
    plan = plan.with_branches(guidance_branches(backbone, settings), heads)
    if plan.use_ulysses:
        if importlib.util.find_spec("yunchang") is None:
            raise InputError("--parallel ulysses needs the package yunchang, which is not installed; pip install "
                             "\"hallo-nodes[parallel]\" (or pip install -r requirements-parallel.txt)")
        per_frame = backbone.config.tokens_per_frame
        if per_frame < plan.ulysses:
            raise InputError(f"ulysses degree {plan.ulysses} exceeds the {per_frame} tokens of a latent frame")
    return plan


class ParallelSession:
    """The processes of one render (the default process group must not exist yet, or be this render's)."""

    def __init__(self, backbone, plan: ParallelPlan):
        self.backbone = backbone
        self.plan = plan
        self.groups = init_groups(plan, backbone.options.device)
        self.channel = Channel(self.groups)
        self.in_collective = False  # an error escaping a step's collectives leaves the others inside them
        self._last_conditioning = None
        self._attach()

    # --- the pieces ------------------------------------------------------------------------------------------------
    def _attach(self) -> None:
        loaders, groups = self.backbone.models.loaders, self.groups
        if self.backbone.family == "hallo3":
            if self.plan.use_ulysses:
                from .ulysses import attach_ulysses

                load_transformer = loaders["transformer"]

                def transformer(device):
                    model = load_transformer(device)
                    attach_ulysses(model, groups.ulysses, torch.device(device))
                    return model

                loaders["transformer"] = transformer
            if self.plan.leader:
                self.backbone.denoiser_wrapper = self._lead_hallo3_clip
            return
        load_denoiser = loaders["denoiser"]

        def denoiser(device):
            model = load_denoiser(device)
            branches = UNetBranches(model.forward, groups)
            model.forward = self._leading_unet(branches) if self.plan.leader else branches  # shadows the method
            return model

        loaders["denoiser"] = denoiser

    def _collective(self, function, *args):
        self.in_collective = True
        result = function(*args)
        self.in_collective = False
        return result

    def _lead_hallo3_clip(self, denoiser):
        """The leader's GuidedDenoiser of a clip: its conditioning sent now, its steps' branches computed by all."""
        self.channel.send("hallo3_clip", denoiser.conditioning, keep=True)
        evaluate = denoiser.velocities

        def velocities(x, timestep, branches):
            self.channel.send("hallo3_step", (x, timestep, branches))
            return self._collective(branch_velocities, evaluate, x, timestep, branches, self.groups)

        denoiser.velocities = velocities
        return denoiser

    def _leading_unet(self, branches: UNetBranches):
        def forward(sample, timestep, cond):
            if cond is not self._last_conditioning:
                self.channel.send("unet_clip", cond, keep=True)
                self._last_conditioning = cond
            self.channel.send("unet_step", (sample, timestep))
            return self._collective(branches, sample, timestep, cond)

        return forward

    # --- the two roles ---------------------------------------------------------------------------------------------
    def lead(self, run: Callable[[], Any]) -> Any:
        """Rank 0: `run()` (the render), then its result or error to the others."""
        try:
            result = run()
        except BaseException as error:
            if not self.in_collective:
                self.channel.send("done", ("error", _portable(error)))
            raise
        self.channel.send("done", ("ok", result))
        return result

    def follow(self) -> Any:
        """The other ranks: load the denoising network (while the leader prepares), compute the steps the leader
        sends, and return the leader's result (or raise its error)."""
        from ..hallo3.denoiser import GuidedDenoiser

        name = "transformer" if self.backbone.family == "hallo3" else "denoiser"
        with torch.no_grad(), self.backbone.models.use(name) as model:
            denoiser = conditioning = None
            while True:
                kind, payload = self.channel.recv()
                if kind == "hallo3_clip":
                    denoiser = GuidedDenoiser(model, payload, schedule=None)
                elif kind == "hallo3_step":
                    x, timestep, branches = payload
                    branch_velocities(denoiser.velocities, x, timestep, branches, self.groups)
                elif kind == "unet_clip":
                    conditioning = payload
                elif kind == "unet_step":
                    sample, timestep = payload
                    model(sample, timestep, conditioning)
                elif kind == "done":
                    status, value = payload
                    if status == "ok":
                        return value
                    value.from_leader = True  # the leader reports it; the others exit with its status, silently
                    raise value
                else:
                    raise RuntimeError(f"unknown message {kind!r} from the leader")

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _portable(error: BaseException) -> BaseException:
    """What the other processes raise for the leader's error: the same user error or interrupt, else LeaderFailed."""
    if isinstance(error, HalloError):
        return type(error)(str(error))
    if isinstance(error, KeyboardInterrupt):
        return KeyboardInterrupt()
    return LeaderFailed(f"rank 0 failed: {type(error).__name__}: {error}")


def parallel_generate(backbone, settings, plan: ParallelPlan, run: Callable[[], Any]) -> Any:
    """`run()` (the one-process render with `backbone`) across the processes of `plan`: every process returns the
    leader's result or raises its error."""
    plan = check_plan(backbone, settings, plan)
    session = ParallelSession(backbone, plan)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(session.close)
        return session.lead(run) if plan.leader else session.follow()
