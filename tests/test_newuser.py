"""What a new user tried with the shell and got wrong: each test is a
command line from the README done through a real mount."""

from conftest import read_text, run
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
    assert read_text(path) == ""
