import json
import stat

import pytest

from services.cli import main
from services.core.settings import load_settings


def test_yaml_then_env_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "bw.yml"
    cfg.write_text("tiled:\n  port: 8123\nbus:\n  in_address: tcp://127.0.0.1:7000\n")
    monkeypatch.setenv("BEAMWATCH_TILED__PORT", "8124")
    s = load_settings(cfg, data_dir=str(tmp_path))
    assert s.tiled.port == 8124  # env wins over the file
    assert s.bus.in_address == "tcp://127.0.0.1:7000"


def test_command_line_beats_env_beats_file_beats_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "bw.yml"
    cfg.write_text(f"data_dir: {tmp_path / 'file'}\ntiled:\n  port: 8123\n  host: 127.0.0.2\n")
    monkeypatch.setenv("BEAMWATCH_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("BEAMWATCH_TILED__HOST", "127.0.0.3")
    s = load_settings(cfg, data_dir=str(tmp_path / "cli"))
    assert s.data_dir == tmp_path / "cli"  # the command line wins over the environment
    assert s.tiled.host == "127.0.0.3"  # the environment wins over the file
    assert s.tiled.port == 8123  # the file wins over the defaults, field by field
    assert s.bus.out_address == "tcp://127.0.0.1:5578"
    assert load_settings(cfg).data_dir == tmp_path / "env"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "top level must be a mapping, got a list"),
        ("tiled: [unclosed\n", "is not valid YAML"),
        ("tiled:\n  port: eighty\n", "tiled.port"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_it(tmp_path, text, message):
    cfg = tmp_path / "bw.yml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=message) as exc:
        load_settings(cfg)
    assert message == "tiled.port" or str(cfg) in str(exc.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "missing.yml")


def test_unknown_setting_is_an_error(tmp_path):
    cfg = tmp_path / "bw.yml"
    cfg.write_text("tiled:\n  prot: 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(cfg)


def test_api_key_generated_once_with_0600(tmp_path):
    s = load_settings(data_dir=str(tmp_path))
    key = s.resolved_api_key()
    path = tmp_path / "tiled_api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(data_dir=str(tmp_path)).resolved_api_key() == key


def test_config_show_redacts_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BEAMWATCH_TILED__API_KEY", "super-secret-key")
    assert main(["--data-dir", str(tmp_path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "super-secret-key" not in out
    shown = json.loads(out)
    assert shown["tiled"]["api_key"] == "**********"
    assert shown["bus"]["in_address"] == "tcp://127.0.0.1:5577"


def test_every_verb_has_help(capsys):
    from services.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"up", "demo", "config", "consume"} <= set(verbs)
    for verb in verbs:
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert "usage: beamwatch" in capsys.readouterr().out


def test_readable_roots_from_yaml_and_env_reach_the_embedded_server(tmp_path, monkeypatch):
    from services.tiled.server import tiled_config

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    cfg = tmp_path / "bw.yml"
    cfg.write_text(f"tiled:\n  readable_roots: [{a}, {tmp_path}/x/../b]\n")
    s = load_settings(cfg, data_dir=str(tmp_path / "data"))
    assert s.readable_roots == [(tmp_path / "data" / "detector").resolve(), a, b]
    storage = tiled_config(s)["trees"][0]["args"]["readable_storage"]
    # and the raw consumer's own frame files
    assert storage == [str(p) for p in s.readable_roots] + [str(s.raw_frames_dir.resolve())]
    monkeypatch.setenv("BEAMWATCH_TILED__READABLE_ROOTS", json.dumps([str(c), str(a)]))
    s = load_settings(cfg, data_dir=str(tmp_path / "data"))
    assert s.readable_roots[1:] == [c, a]  # env wins over the file
    # a plain string in the YAML file is split on os.pathsep
    cfg.write_text(f"tiled:\n  readable_roots: '{b}:{c}'\n")
    monkeypatch.delenv("BEAMWATCH_TILED__READABLE_ROOTS")
    assert load_settings(cfg, data_dir=str(tmp_path / "data")).readable_roots[1:] == [b, c]


def test_user_facing_verbs_describe_themselves():
    from services.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for verb in ("up", "report", "import", "reprocess", "export"):
        assert verbs[verb].description, f"`beamwatch {verb} --help` has no description"
    # import writes its first results where the live service does; only later ones are -r<k>
    assert "analysis/<uid>/<pipeline>," in " ".join(verbs["reprocess"].description.split())


@pytest.mark.parametrize("verb", [["report", "some-uid", "-o", "r.html"], ["reprocess", "x"]])
def test_tiled_not_running_or_wrong_key_is_one_clear_error(
    verb, tmp_path, caplog, tiled_server, monkeypatch
):
    from tests.conftest import free_port

    monkeypatch.chdir(tmp_path)
    closed = tmp_path / "closed.yml"
    closed.write_text(f"tiled:\n  port: {free_port()}\n  api_key: k\n")
    wrong_key = tmp_path / "wrong_key.yml"
    wrong_key.write_text(f"tiled:\n  port: {tiled_server.port}\n  api_key: not-the-key\n")
    with caplog.at_level("ERROR", logger="beamwatch"):
        # --config after the verb, as `up` takes it
        assert main([*verb, "--config", str(closed), "--data-dir", str(tmp_path)]) == 2
        assert main([*verb, "--config", str(wrong_key)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors
    assert "cannot reach it (is it running?)" in errors[0]
    assert f"Tiled at http://127.0.0.1:{tiled_server.port}: the API key was refused" in errors[1]
    assert not (tmp_path / "r.html").exists()


def test_every_option_of_the_offline_verbs_says_what_it_does():
    from services.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]

    def sub(parser, name):
        return parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]

    commands = {
        "xanes align": sub(verbs["xanes"], "align"),
        "xanes trajectory": sub(verbs["xanes"], "trajectory"),
        "tomo reconstruct": sub(verbs["tomo"], "reconstruct"),
        "cracks map": sub(verbs["cracks"], "map"),
        "particles analyze": sub(verbs["particles"], "analyze"),
        **{v: verbs[v] for v in ("import", "reprocess", "export", "report", "up")},
    }
    bare = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in commands.items()
        for action in parser._actions
        if not action.help
    ]
    assert bare == []


def test_up_waits_for_a_slow_tiled_start_as_long_as_the_setting_says(tmp_path, monkeypatch):
    """A loaded machine can take minutes to start Tiled: ``up`` waits
    ``tiled.start_timeout`` (default 300 s) for its first answer, then fails naming the URL."""
    import http.server
    import socket
    import threading
    import time

    from services.runtime.supervisor import wait_for_tiled

    assert load_settings(data_dir=str(tmp_path)).tiled.start_timeout == 300.0
    monkeypatch.setenv("BEAMWATCH_TILED__START_TIMEOUT", "42")
    assert load_settings(data_dir=str(tmp_path)).tiled.start_timeout == 42.0

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(TimeoutError, match=f"Tiled at {url} did not answer within 1 s"):
        wait_for_tiled(url, timeout=1.0)

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200 if self.path == "/api/v1/" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers: list[http.server.HTTPServer] = []

    def start_late() -> None:
        time.sleep(1.5)  # the server comes up after the waiting began
        servers.append(http.server.HTTPServer(("127.0.0.1", port), Answer))
        servers[0].serve_forever()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        began = time.monotonic()
        wait_for_tiled(url, timeout=60.0)
        assert time.monotonic() - began >= 1.0
    finally:
        while not servers and thread.is_alive():
            time.sleep(0.05)
        if servers:
            servers[0].shutdown()
            servers[0].server_close()
