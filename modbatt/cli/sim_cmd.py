"""``modbatt sim``: a 1-31 module pack on any bus, for a duration or until interrupted.

Every module sends the legacy telemetry at its documented rates and the pack its keep-alives and
acknowledged critical commands, each through its entity's channel at the tier the certificate's
policy gives (docs/simulation.md, "modbatt sim"). Other processes (``modbatt monitor``, candump,
SavvyCAN, a notebook) watch the traffic on the same bus. Ctrl-C (or SIGTERM) stops the traffic,
lets what is in flight finish, and prints the summary; a second Ctrl-C aborts the drain.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import EXIT_FAILED, EXIT_OK
from .bus_options import add_bus_arguments, bus_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run a simulated 1-31 module pack on a bus (for a duration or until Ctrl-C)",
        description="A pack controller and 1-31 modules, bound and paired through the real protocol, put secured "
        "pack traffic on a python-can bus at the documented rates: telemetry at the exchange tier, acknowledged "
        "commands at the pairing tier. Prints frames sent per class and rejects by reason; exits 1 if anything "
        "was lost, rejected or left unacknowledged.",
    )
    p.add_argument("-m", "--modules", type=int, default=3, help="modules in the pack, 1-31 (default 3)")
    p.add_argument("-d", "--duration", type=float, default=None, help="seconds of traffic (default: until Ctrl-C)")
    state = p.add_mutually_exclusive_group()
    state.add_argument(
        "--state",
        type=Path,
        help="keep the pack here: keys, ledger and channel freshness persist, and a rerun continues the same "
        "sessions (created on first use)",
    )
    state.add_argument(
        "--ephemeral", action="store_true", help="keep everything in memory: keys and freshness end with the process"
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="protocol profile of the pairings: seed or efficient (docs/profiles.md); a new pack defaults to seed, "
        "a --state pack keeps the profile it was paired under",
    )
    p.add_argument("--drain", type=float, default=0.5, help="seconds for acks in flight after the traffic stops")
    p.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the soak (docs/delivery.md §6): each module in its own process on udp_multicast, through the fault "
        "bus (--faults, default 10%% loss with duplication, reordering and corruption), a random module killed and "
        "restarted every --restart-every seconds; reports exactly-once, rejects, latency and memory",
    )
    p.add_argument(
        "--restart-every", type=float, default=5.0, metavar="S", help="soak: kill and restart a module every S seconds"
    )
    p.add_argument(
        "--fail-on-give-up",
        action="store_true",
        help="soak: also exit 1 if any command was given up or left unsettled (by default the exit status is the "
        "contract: 0 acknowledged and not applied, 0 applied twice, every reject classified)",
    )
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="soak: trace the pack's allocations (tracemalloc) and report what grew between mid-run and the end",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_bus_arguments(p, faults=True)
    p.set_defaults(handler=_sim)


@contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGINT/SIGTERM call ``stop()`` once (clean shutdown); a second SIGINT interrupts for real."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C aborts the drain

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _soak(args: argparse.Namespace) -> int:
    from ..sim.soak import DEFAULT_SOAK_FAULTS, run_soak
    from ..sim.state import check_modules

    check_modules(args.modules)
    if not args.soak > 0 or not args.restart_every > 0:
        raise ConfigError("--soak and --restart-every must be positive numbers of seconds")
    if args.state is not None or args.interface not in (None, "udp_multicast"):
        raise ConfigError("the soak runs its own pack on udp_multicast: give neither --state nor another bus")
    if args.profile not in (None, "seed"):
        raise ConfigError("the soak pairs its pack under the seed profile: --profile goes with a plain run")
    out = sys.stderr if args.json else sys.stdout
    faults = args.faults or DEFAULT_SOAK_FAULTS
    print(f"soak: {args.modules} module processes on udp_multicast for {args.soak:g} s, faults {faults}", file=out)
    report = run_soak(
        args.modules, args.soak, faults=faults, restart_every=args.restart_every, trace_memory=args.trace_memory
    )
    summary = report.to_dict()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_soak(summary)
    status, problem = soak_status(report, fail_on_give_up=args.fail_on_give_up)
    if problem:
        print(f"modbatt sim: error: {problem}", file=sys.stderr)
    return status


def soak_status(report: Any, *, fail_on_give_up: bool = False) -> tuple[int, str | None]:
    """The soak's exit status and why it failed: the contract (docs/delivery.md §6), and with
    ``fail_on_give_up`` also any command given up or left unsettled."""
    if not report.ok:
        return EXIT_FAILED, "the delivery contract was broken (acknowledged and not applied, applied twice, or "\
            "an unclassified reject)"
    if fail_on_give_up and report.given_up:
        return EXIT_FAILED, f"{report.given_up} commands given up or unsettled (--fail-on-give-up)"
    return EXIT_OK, None


def _print_soak(summary: dict[str, Any]) -> None:
    c = summary["commands"]
    print(f"ran {summary['duration_s']:g} s ({summary['wall_s']:g} s wall), {summary['restarts']} module restarts")
    print(
        f"commands: {c['sent']} sent, {c['acknowledged']} acknowledged, {c['applied']} applied, "
        f"{c['acknowledged_not_applied']} acknowledged and not applied, {c['applied_twice']} applied twice, "
        f"given up {sum(c['given_up'].values())}, unsettled {c['unsettled']}, {c['retransmissions']} retries"
    )
    print("rejects: " + (", ".join(f"{r} {n}" for r, n in summary["rejects"].items()) or "none"))
    if summary["unclassified_rejects"]:
        print("UNCLASSIFIED rejects: " + ", ".join(f"{r} {n}" for r, n in summary["unclassified_rejects"].items()))
    for cls, q in c["latency_ms"].items():
        print(f"latency {cls}: p50 {q['p50']:.0f} ms, p90 {q['p90']:.0f} ms, p99 {q['p99']:.0f} ms (n={q['n']})")
    m = summary["memory"]

    def fit(f: dict[str, Any]) -> str:
        ci = "n/a" if f["ci95"] is None else f"{f['ci95']:g}"
        return f"{f['kib_per_min']:g} ± {ci} KiB/min"

    per = m["module_process_slopes"]
    spread = f", {per['n']} module processes fitted: min {per['min']}, median {per['median']}, max {per['max']}"
    print(f"memory slope (95 %): pack {fit(m['pack'])}, median module {fit(m['module_median'])}"
          + (spread if per["n"] else ""))  # fmt: skip
    for line in m["growth"]:
        print(f"  grew: {line}")
    if summary["truncated"]:
        print("note: a process fell more than 30 s behind real time (the machine is overloaded)")
    print("contract held" if summary["ok"] else "CONTRACT BROKEN")


def _sim(args: argparse.Namespace) -> int:
    from ..can.wiretime import CLASSIC, FD

    if args.soak is not None:
        return _soak(args)
    from ..model.profile import DEFAULT_PROFILE, profile_named
    from ..sim.pack import PackSimulation, RealClock
    from ..sim.state import check_modules, ephemeral_pack, pack_on_disk

    check_modules(args.modules)
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be a positive number of seconds")
    if args.drain < 0:
        raise ConfigError("--drain must not be negative")
    if args.state is None and not args.ephemeral:
        raise ConfigError(
            "choose where the pack's keys and channel freshness live: --state DIR (persisted) or --ephemeral"
        )
    bus = bus_from_args(args)
    # can-isotp logs every framing fault it recovers from; the run counts them (transport_errors).
    logging.getLogger("isotp").setLevel(logging.ERROR)
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    protocol = profile_named(args.profile) if args.profile is not None else None
    if args.state is not None:
        setup = pack_on_disk(args.state, args.modules, protocol)
    else:
        setup = ephemeral_pack(args.modules, protocol=protocol or DEFAULT_PROFILE)
    try:
        sim = PackSimulation(args.modules, bus=bus, profile=FD if bus.fd else CLASSIC, clock=RealClock(), setup=setup)
    except BaseException:
        setup.close()
        raise
    with sim:
        where = "in memory (--ephemeral)" if args.ephemeral else f"{args.state} (persisted)"
        say(f"bus: {bus.describe(source=True)}")
        if bus.embedded:
            say("note: the embedded virtual bus lives in this process only; name a shared bus to watch it elsewhere")
        length = f"for {args.duration:g} s" if args.duration is not None else "until Ctrl-C"
        say(f"pack of {args.modules} modules, state {where}: sending {length}")
        with _stop_on_signals(sim.stop):
            stats = sim.run(args.duration, drain=args.drain, max_wall=None)
    summary = _summary(stats, bus, args, where, sim.protocol.value)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print(summary)
    if not stats.ok:
        for problem in stats.problems():
            print(f"modbatt sim: error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _summary(stats: Any, bus: Any, args: argparse.Namespace, where: str, sim_protocol: str) -> dict[str, Any]:
    from ..sim.summary import command_summary

    return {
        "ok": stats.ok,
        "problems": stats.problems(),
        "bus": bus.to_json(),
        "modules": args.modules,
        "protocol": sim_protocol,
        "state": where,
        "interrupted": stats.interrupted,
        "seconds": round(stats.sim_seconds, 3),
        "frames_sent": dict(sorted(stats.frames_tx.items())),
        "frames_received": dict(sorted(stats.frames_rx.items())),
        "units_sent": dict(sorted(stats.units_tx.items())),
        "units_received": dict(sorted(stats.units_rx.items())),
        "rejects": dict(sorted(stats.rejects.items())),
        "resync_rejects": dict(sorted(stats.resync_rejects.items())),
        "transport_errors": dict(sorted(stats.transport_errors.items())),
        "commands": command_summary(stats),
        "telemetry_decoded": stats.telemetry_decoded,
    }


def _print(summary: dict[str, Any]) -> None:
    how = "interrupted after" if summary["interrupted"] else "ran"
    print(f"{how} {summary['seconds']:.1f} s on {summary['bus']['description']}")
    print(f"{'class/tier':<34} {'frames sent':>11} {'frames recv':>11} {'units sent':>10} {'units recv':>10}")
    keys = sorted(set(summary["frames_sent"]) | set(summary["units_sent"]))
    for key in keys:
        print(
            f"{key:<34} {summary['frames_sent'].get(key, 0):>11} {summary['frames_received'].get(key, 0):>11} "
            f"{summary['units_sent'].get(key, 0):>10} {summary['units_received'].get(key, 0):>10}"
        )
    total = sum(summary["frames_sent"].values())
    print(f"{'total':<34} {total:>11} {sum(summary['frames_received'].values()):>11}")
    rejects = summary["rejects"]
    print("rejects: " + (", ".join(f"{r} {n}" for r, n in rejects.items()) if rejects else "none"))
    if summary["resync_rejects"]:
        stale = sum(summary["resync_rejects"].values())
        print(f"resync before the traffic: {stale} stale answers refused (both ends restarted; docs/simulation.md)")
    c = summary["commands"]
    print(
        f"commands: {c['sent']} sent, {c['acknowledged']} acknowledged ({c['refused']} refused), "
        f"{c['unsettled']} never acknowledged, {c['out_of_order']} out of order"
    )
    print(
        f"delivery: {c['retransmissions']} retries, {c['repeats_not_applied']} repeats answered without applying, "
        f"{c['acknowledged_not_applied']} acknowledged and not applied, {c['applied_twice']} applied twice, "
        f"given up: {sum(c['given_up'].values())}"
    )
    print("ok" if summary["ok"] else "FAILED")
