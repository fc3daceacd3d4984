"""What a new user tried with the shell and got wrong: each test is a
command line from the README done through a real mount."""

from conftest import fusermount, is_mounted, read_text, run, wait_for
from conv_helpers import cdir, cmount, mkconv, prompt, reply
from fake_lms import Reply
from test_mcp import hostile_entry, mount_with, tstatus


def test_shell_redirect_of_a_bad_mcp_json_keeps_the_old_file(
        fake, mount, tmp_path):
    # bash's `> file` opens with O_TRUNC, then closes the file once (dup2)
    # before echo writes: that first close must not put an empty mcp.json
    # in place of the good one.
    m = mount_with(mount, tmp_path, {"h": hostile_entry("good")})
    path = m.path / "tools" / "mcp.json"
    good = read_text(path)
    assert good.strip(), good
    r = run(["bash", "-c", "echo 'not json' > " + str(path)])
    assert read_text(path) == good, (r.returncode, r.stderr)
    assert "mcp.json: write refused at " in tstatus(m), tstatus(m)
    assert "mcp h:" in tstatus(m), tstatus(m)
    # A good file written the same way replaces it.
    r = run(["bash", "-c",
             "echo '{\"mcpServers\": {}}' > " + str(path)])
    assert r.returncode == 0, r.stderr
    assert read_text(path).strip() == '{"mcpServers": {}}'
    # An emptied file (`: >`) is a valid mcp.json: no servers.
    r = run(["bash", "-c", ": > " + str(path)])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: read_text(path) == "", message="mcp.json emptied")


def test_reasoning_of_a_killed_turn_is_parted_from_the_next(fake, mount):
    # kill -9 while the model reasons: the next turn's reasoning still
    # starts after a blank line, like every other turn's.
    m = cmount(mount)
    mkconv(m, "k")
    fake.enqueue(Reply(text="never shown",
                       reasoning=["r%d " % i for i in range(60)], delay=0.05))
    prompt(m, "k", "think")
    path = cdir(m, "k") / "reasoning"
    wait_for(lambda: path.exists() and "r3 " in read_text(path),
             message="reasoning under way")
    m.kill9()
    m.start()
    fake.enqueue(Reply(text="ok", reasoning="NEXT"))
    prompt(m, "k", "again")
    assert reply(m, "k") == "ok"
    text = read_text(path)
    cut, sep, nxt = text.rpartition("\n\nNEXT")
    assert sep and nxt == "\n", repr(text[-80:])
    assert cut.startswith("r0 r1 ") and "\n" not in cut, repr(text[-80:])


def test_a_state_directory_in_use_is_refused(fake, mount, lmsfs_bin,
                                             tmp_path):
    # A second daemon on the same state directory (a systemd unit and a
    # hand mount, say) would take the first one's running answers for
    # crashed ones and mark them interrupted in the middle of the history.
    m = cmount(mount)
    mkconv(m, "c")
    fake.enqueue(Reply(text="one two three four five six", delay=0.2))
    prompt(m, "c", "slow")
    mnt2 = tmp_path / "second"
    mnt2.mkdir()
    try:
        r = run([str(lmsfs_bin), str(mnt2), "-o",
                 "state_dir=%s,base_url=%s" % (m.state, fake.url)])
    finally:
        if is_mounted(mnt2):
            fusermount(mnt2, lazy=True)
    assert r.returncode != 0, r
    assert "in use by another lmsfs" in r.stderr, r.stderr
    assert str(m.state) in r.stderr, r.stderr
    assert reply(m, "c") == "one two three four five six"
    hist = read_text(cdir(m, "c") / "messages.jsonl")
    assert "interrupted" not in hist, hist
    # Once the first is unmounted the directory is free again.
    m.umount()
    m.start()
    assert reply(m, "c") == "one two three four five six"


def test_echo_of_a_bad_mcp_json_fails_at_write(fake, mount, tmp_path):
    # A shell ignores close()'s error: the refusal has to come from write()
    # for `echo ... > mcp.json` to fail. The old file is kept either way.
    m = mount_with(mount, tmp_path, {"h": hostile_entry("good")})
    path = m.path / "tools" / "mcp.json"
    good = read_text(path)
    for bad in ("not json", "[1, 2]", '{"mcpServers": {}} trailing'):
        r = run(["bash", "-c", "echo '%s' > %s" % (bad, path)])
        assert r.returncode != 0, (bad, r)
        assert "Invalid argument" in r.stderr, (bad, r.stderr)
        assert read_text(path) == good, bad
        assert "mcp.json must hold one JSON object" in tstatus(m), tstatus(m)
    # A valid file written line by line, in separate writes, still works;
    # also when another process writes a part and closes its copy.
    r = run(["bash", "-c",
             "{ echo '{\"mcpServers\":'; echo '  {}' | cat; echo '}'; } > "
             + str(path)])
    assert r.returncode == 0, r.stderr
    assert read_text(path) == '{"mcpServers":\n  {}\n}\n'
    with open(path, "w") as f:
        f.write('{"mcpServers"')
        f.flush()
        f.write(': {}}')
    assert read_text(path) == '{"mcpServers": {}}'


def _decimals(raw, key):
    """The number of decimal places of every value of `key` in raw JSON."""
    import re
    return [len(d) for d in
            re.findall(r'"%s":\s*-?\d+(?:\.(\d+))?' % key, raw)]


def test_status_rounds_times_and_rates_as_lmsfs_stats_does(fake, mount):
    # .status shows times to 0.1 ms and rates to 0.01 tokens/s, like the
    # lmsfs_stats of the history line, not 17 digits.
    m = cmount(mount)
    mkconv(m, "r")
    fake.enqueue(Reply(chunks=["w%d " % i for i in range(12)], delay=0.05,
                       stats=False, first_delay=0.0137))
    prompt(m, "r", "go")
    path = cdir(m, "r") / ".status"
    raw = ""

    def generating_with_rate():
        nonlocal raw
        raw = read_text(path)
        return '"tokens_per_second"' in raw and '"generating"' in raw
    wait_for(generating_with_rate, message="a rate while generating")
    assert _decimals(raw, "elapsed_ms") and \
        max(_decimals(raw, "elapsed_ms")) <= 1, raw
    assert max(_decimals(raw, "tokens_per_second")) <= 2, raw
    reply(m, "r")
    raw = read_text(path)
    assert _decimals(raw, "ttft_ms") and \
        max(_decimals(raw, "ttft_ms")) <= 1, raw
    assert max(_decimals(raw, "tokens_per_second")) <= 2, raw
    hist = read_text(cdir(m, "r") / "messages.jsonl").splitlines()[-1]
    assert max(_decimals(hist, "ttft_ms")) <= 1, hist
    assert max(_decimals(hist, "duration_ms")) <= 1, hist


def test_a_text_attachment_is_sent_without_its_bom(fake, mount):
    # Settings files and history lines drop a UTF-8 byte order mark; a text
    # attachment's is no part of its text either. The file keeps it.
    from test_attach import last_user_parts, put
    m = cmount(mount)
    mkconv(m, "b")
    put(m, "b", "bom.txt", b"\xef\xbb\xbfhello\n")
    put(m, "b", "two.txt", b"\xef\xbb\xbf\xef\xbb\xbfx")
    prompt(m, "b", "read")
    reply(m, "b")
    parts = last_user_parts(fake)
    assert parts[1]["text"] == "[file bom.txt]\nhello\n", parts
    # Only the first is a mark; a second is text (a zero-width no-break
    # space) and goes as it is.
    assert parts[2]["text"] == "[file two.txt]\n\ufeffx", parts
    with open(cdir(m, "b") / "files" / "bom.txt", "rb") as f:
        assert f.read() == b"\xef\xbb\xbfhello\n"


def test_settings_appended_to_a_model_file_load_it(fake, mount):
    # `>>` writes at the end of what the file shows (the model's JSON); the
    # file's content is never stored, so the settings count from the start.
    from test_models_load import EQWEN3, QWEN3, loads, msh, v1
    v1(fake)
    m = mount()
    r = msh(m, "touch %s" % EQWEN3)
    assert r.returncode == 0, r.stderr
    assert read_text(m.path / "models" / EQWEN3).strip()  # not empty
    r = msh(m, "echo '{\"context_length\":4096}' >> %s" % EQWEN3)
    assert r.returncode == 0, r.stderr
    assert loads(fake)[-1] == {"model": QWEN3, "context_length": 4096}
    # Python's "a" mode, in two writes.
    with open(m.path / "models" / EQWEN3, "a") as f:
        f.write('{"context_length"')
        f.flush()
        f.write(': 8192}')
    assert loads(fake)[-1] == {"model": QWEN3, "context_length": 8192}
    r = msh(m, "echo 'nope' >> %s" % EQWEN3)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r
