"""The ``beamwatch`` command line: ``up``, ``demo``, ``config show``, ``consume`` and the
offline re-processing verbs (``xanes``, ``tomo``, ``cracks``)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from services.cli.inputs import settings_from_args
from services.core.logs import configure_logging

logger = logging.getLogger("beamwatch")

OFFLINE_VERB_MODULES = (
    "services.cli.xanes",
    "services.cli.tomo",
    "services.cli.particles",
    "services.cli.runs",
    "services.cli.delete",
    "services.cli.export",
    "services.cli.train",
)


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    sys.stdout.write(json.dumps(settings.redacted(), indent=2) + "\n")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from services.runtime.consumer import Consumer
    from services.runtime.supervisor import install_signal_handlers

    settings = settings_from_args(args)
    configure_logging(settings.log_level, service=f"consumer-{args.role}")
    consumer = Consumer(args.role, settings)
    port = settings.metrics.raw_port if args.role == "raw" else settings.metrics.analysis_port
    consumer.metrics.serve(settings.metrics.host, port)
    install_signal_handlers(consumer.request_stop)
    source = settings.nats_url if settings.bus.mode == "nats" else settings.bus.out_address
    logger.info("%s consumer reading %s", args.role, source)
    return consumer.run_forever()


def cmd_worker(args: argparse.Namespace) -> int:
    """One more analysis worker on the JetStream bus, on this machine or any other."""
    from services.runtime.consumer import Consumer
    from services.runtime.supervisor import install_signal_handlers

    settings = settings_from_args(args, bus={"mode": "nats", "nats_url": args.bus})
    configure_logging(settings.log_level, service=f"worker-{args.role}")
    consumer = Consumer(args.role, settings)
    if args.metrics_port:
        consumer.metrics.serve(settings.metrics.host, args.metrics_port)
    install_signal_handlers(consumer.request_stop)
    logger.info("%s worker sharing the runs of %s", args.role, settings.nats_url)
    return consumer.run_forever()


def cmd_bridge(args: argparse.Namespace) -> int:
    from services.bus.bridge import Bridge
    from services.runtime.supervisor import install_signal_handlers

    settings = settings_from_args(args)
    name = "bridge" if args.instance == 1 else f"bridge-{args.instance}"
    configure_logging(settings.log_level, service=name)
    bridge = Bridge(settings)
    if settings.nats.bridge_metrics_port:
        port = settings.nats.bridge_metrics_port + args.instance - 1
        try:
            bridge.metrics.serve(settings.metrics.host, port)
        except OSError as exc:  # bridging matters more than its metrics: go on without
            logger.error("%s: metrics not served, port %d: %s", name, port, exc)
    install_signal_handlers(bridge.request_stop)
    return bridge.run()


def cmd_up(args: argparse.Namespace) -> int:
    from services.runtime.supervisor import (
        Supervisor,
        banner,
        child_specs,
        install_signal_handlers,
        wait_for_tiled,
    )

    settings = settings_from_args(args)
    configure_logging(settings.log_level, service="up")
    supervisor = Supervisor(child_specs(settings, args.config))
    install_signal_handlers(supervisor.request_stop)
    supervisor.metrics.serve(settings.metrics.host, settings.metrics.supervisor_port)
    supervisor.start()
    try:
        wait_for_tiled(settings.tiled_url, timeout=settings.tiled.start_timeout)
        for line in banner(settings):
            logger.info(line)
        supervisor.run()
    finally:
        supervisor.stop()
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from services.web.app import serve

    settings = settings_from_args(args)
    if args.port is not None:
        settings.web.port = args.port
    configure_logging(settings.log_level, service="web")
    serve(settings, tiled_url=args.tiled_url)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.runtime.demo import run_demo

    settings = settings_from_args(args)
    configure_logging(settings.log_level, service="demo")
    return run_demo(settings, config_file=args.config, serve=args.serve, quick=args.quick)


def cmd_report(args: argparse.Namespace) -> int:
    from tiled.client import from_uri

    from services.web.report import build_report

    settings = settings_from_args(args)
    client = from_uri(settings.tiled_url, api_key=settings.resolved_api_key())
    try:
        text = build_report(client, args.uid)
    except KeyError as exc:
        logger.error("run %s is not in %s (raw/)", exc.args[0], settings.tiled_url)
        return 2
    finally:
        client.context.close()
    args.output.write_text(text)
    logger.info("wrote %s (%d kB, self-contained)", args.output, len(text) // 1024)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamwatch",
        description="Live analysis of TXM and nano-tomography scans: Bluesky 0MQ in, Tiled out.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where Tiled, spools and detector files live"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    from services.cli.inputs import add_settings_options

    up = sub.add_parser(
        "up",
        help="start Tiled, the 0MQ proxy, the consumers and the live page",
        description="Start, as supervised child processes, Tiled (catalog under DATA_DIR/tiled), "
        "the bluesky 0MQ proxy, the NATS JetStream server and bridge (bus.mode nats), the raw "
        "and analysis consumers and the live page; addresses and ports from the settings "
        "(`beamwatch config show`). Ctrl-C or SIGTERM stops them all.",
    )
    up.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML settings file")
    up.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="data directory")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser(
        "demo", help="run `up`, then a simulated operando XANES and a tomography scan"
    )
    demo.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML settings file")
    demo.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="data directory")
    demo.add_argument("--serve", action="store_true", help="keep serving after the scans")
    demo.add_argument("--quick", action="store_true", help="fewer energies/angles (for tests)")
    demo.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="settings")
    config_sub = config.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the effective settings (API key redacted)")
    show.set_defaults(func=cmd_config_show)

    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report of one run, or a comparison of several "
        "(needs Tiled running)",
        description="Write one HTML file (figures embedded) with the start document, the results "
        "and figures of every analysis of each run in the configured Tiled (--config, "
        "--data-dir of `beamwatch up`, or BEAMWATCH_TILED__URL); with several uids, first "
        "their distributions overlaid (sizes, detachment, flawed fraction, damage against "
        "depth, edge energy) and a table of their numbers.",
    )
    report.add_argument("uid", nargs="+", help="run uid; several uids overlay their distributions")
    report.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    add_settings_options(report)
    report.set_defaults(func=cmd_report)

    web = sub.add_parser(
        "web",
        help="serve the live page alone (started by `up`); it reads from any Tiled server",
        description="Serve the live web page. The page reads runs and results from Tiled in the "
        "browser; the Tiled server must allow this page's origin (the embedded one does).",
    )
    web.add_argument("--tiled-url", default=None, help="Tiled to read (default: the settings')")
    web.add_argument("--port", type=int, default=None, help="port (default: settings web.port)")
    web.set_defaults(func=cmd_web)

    consume = sub.add_parser("consume", help="run one consumer (started by `up`)")
    consume.add_argument("role", choices=["raw", "analysis"], help="which consumer")
    consume.set_defaults(func=cmd_consume)

    worker = sub.add_parser(
        "worker",
        help="one more consumer sharing the runs of a JetStream bus (any machine)",
        description="Start one more consumer process on the JetStream bus: it claims runs no "
        "other process of its role holds, and takes over the runs of one that died (after "
        "nats.ack_wait). Tiled and the data dir come from the settings as for `up`.",
    )
    worker.add_argument("--bus", required=True, help="NATS server, e.g. nats://host:4222")
    worker.add_argument(
        "--role", choices=["analysis", "raw"], default="analysis", help="(default analysis)"
    )
    worker.add_argument("--metrics-port", type=int, default=0, help="serve metrics (0: none)")
    worker.set_defaults(func=cmd_worker)

    bridge = sub.add_parser(
        "bridge", help="copy the 0MQ proxy's documents into JetStream (started by `up`)"
    )
    bridge.add_argument(
        "--instance",
        type=int,
        default=1,
        help="which of the nats.bridges redundant bridges this is (1..N; metrics on "
        "nats.bridge_metrics_port + N - 1)",
    )
    bridge.set_defaults(func=cmd_bridge)

    for module_name in OFFLINE_VERB_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    if not logging.getLogger().handlers:
        configure_logging("INFO")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    except Exception as exc:
        reason = _tiled_refusal(exc)
        if reason is None:
            raise
        logger.error(
            "Tiled at %s: %s (%s); use the --config / --data-dir of the `beamwatch up` that "
            "serves it, or set tiled.url and tiled.api_key (BEAMWATCH_TILED__URL, "
            "BEAMWATCH_TILED__API_KEY)",
            settings_from_args(args).tiled_url,
            reason,
            exc,
        )
        return 2


def _tiled_refusal(exc: BaseException) -> str | None:
    """Why Tiled could not be used, when ``exc`` says it: not reachable (httpx's transport
    errors: refused, timed out) or the API key refused (401/403); else None."""
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return "cannot reach it (is it running?)"
    response = getattr(exc, "response", None)
    if type(exc).__module__.startswith("tiled.") and response is not None:
        if getattr(response, "status_code", None) in (401, 403):
            return "the API key was refused"
    return None


if __name__ == "__main__":
    sys.exit(main())
