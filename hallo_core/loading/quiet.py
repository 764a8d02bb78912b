"""Quiet Hugging Face loading: transformers prints load reports (e.g. for wav2vec2-base-960h's unused CTC head) and
progress bars that would bury the user's own output."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
