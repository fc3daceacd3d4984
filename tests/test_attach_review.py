"""Attachments (issue 14), review findings: the mock provider reads an
array-form prompt; moves out of attach/ survive a name taken in files/
meanwhile and never follow a symlink planted in the state directory;
attach/ and files/ are listed without following symlinks. Each test drives
the mounted filesystem."""

import json
import os

import pytest

from conftest import listdir, read_text, run, wait_for
from conv_helpers import (LLAMA, FAST_FAIL, cdir, chat_bodies, cmount,
                          history, mkconv, opts, prompt, qn, reply, sh,
                          wait_answered)
from fake_lms import content_parts


def put(m, conv, name, data):
    r = sh(m, "mkdir -p %s/attach" % qn(conv))
    assert r.returncode == 0, r.stderr
    p = cdir(m, conv) / "attach" / name
    with open(p, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return p


def file_ref(path):
    return {"type": "file", "file": {"path": path}}


# --- the mock provider ---------------------------------------------------------

def test_mock_reads_the_text_of_a_prompt_with_attachments(mount):
    """The mock used to read an array content as an empty prompt."""
    m = mount(args=opts(provider="mock", mock_delay="1ms",
                        default_model="mock-1b-instruct"))
    mkconv(m, "mk")
    put(m, "mk", "notes.txt", "the total is 12.50\n")
    put(m, "mk", "todo.md", "- buy milk\n")
    prompt(m, "mk", "what do these say?")
    out = reply(m, "mk").strip()
    assert out == ("This is the lmsfs mock model (turn 1). You said: what do "
                   "these say? (2 files attached: notes.txt, todo.md)"), out
    prompt(m, "mk", "and now?")
    out = reply(m, "mk").strip()
    assert out == ("This is the lmsfs mock model (turn 2). You said: and "
                   "now?"), out
