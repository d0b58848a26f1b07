"""progress_hook: stages timed by StageTimer and model loading reach a listener and a tqdm bar."""

from __future__ import annotations

import io
import threading

from tqdm import tqdm

from selfseg_fast.progress_hook import listening, report, shown_on
from selfseg_fast.timing import StageTimer


def test_stage_timer_and_reports_reach_listeners_from_any_thread() -> None:
    seen: list[tuple] = []
    timer = StageTimer()
    with listening(lambda *event: seen.append(event)):
        with timer("encode"):
            report("caption", done=3, total=8)
        worker = threading.Thread(target=report, args=("nouns",))
        worker.start()
        worker.join()
    report("after")  # nobody listens any more
    assert seen == [("encode", None, None), ("caption", 3, 8), ("nouns", None, None)]


def test_reports_show_on_a_bar() -> None:
    stream = io.StringIO()
    bar = tqdm(total=2, file=stream, desc="caption", mininterval=0)
    with shown_on(bar):
        report("loading BLIP")
        report("caption", done=2, total=5)
    bar.close()
    text = stream.getvalue()
    assert "loading BLIP" in text and "caption 2/5" in text
