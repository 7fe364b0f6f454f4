"""The frame every ``vbproto`` command runs in (the commands themselves are in ``cli.py``).

* errors: any :class:`~virtio_balloon_proto.errors.VBProtoError`, user-path ``OSError`` or
  click usage error becomes ONE line on stderr and exit status 2 -- under ``--json`` one JSON
  object on stdout instead, ``{"error": ..., "field": ..., "offset": ..., ...}``;
* signals: SIGINT and SIGTERM raise :class:`Interrupted`; the command leaves its outputs valid
  and the process exits 130;
* help: every command's ``--help`` ends with what its exit statuses mean.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .errors import VBProtoError

F = TypeVar("F", bound=Callable[..., Any])

#: ctx.meta key set by every command's --json flag (ctx.meta is shared by nested contexts)
JSON_KEY = "vbproto.json"

EXIT_DEFAULT = ("0 done; 2 bad usage or input (one line on stderr; a JSON object on stdout "
                "under --json); 130 interrupted (SIGINT, SIGTERM).")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: the command stops, leaves its outputs valid, exits 130.

    Not a KeyboardInterrupt on purpose: CPython 3.11 marks a KeyboardInterrupt raised inside
    ``exec()`` of a string (dataclasses build methods that way) as unhandled even after it is
    caught, and then exits by SIGINT instead of with our status."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """For the command's lifetime (restored when its context closes: CliRunner callers keep
    theirs); only the main thread can install handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    click.get_current_context().call_on_close(restore)


def json_mode() -> bool:
    """True when the running command was given --json."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(JSON_KEY))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_KEY] = True
    return value


def json_option(help_text: str, *, expose: bool = True) -> Callable[[F], F]:
    """The --json flag: sets JSON mode for the command's errors too."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_set_json,
                        expose_value=expose, help=help_text)


def emit_json(obj: Any) -> None:
    """One JSON document (or one JSON Lines record) on stdout."""
    click.echo(json.dumps(obj, default=str))


def _fail(message: str, *, as_json: bool, code: int = 2, **fields: Any) -> None:
    message = " ".join(message.split())  # one line: click's choice lists hold tabs and newlines
    if as_json:
        try:
            emit_json({"error": message, **fields})
            sys.stdout.flush()
        except OSError:
            # stdout itself is what failed (--json > /dev/full): say it on stderr instead, and
            # let the interpreter's last flush go nowhere
            _silence_stdout()
            as_json = False
    if not as_json:
        click.echo(f"vbproto: error: {message}", err=True)
    sys.exit(code)


def _silence_stdout() -> None:
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: the largest ``--timeout`` (a day): ``nan``, ``inf`` and ``1e300`` reached ``select()`` as a
#: ValueError or OverflowError traceback
MAX_SECONDS = 86400.0


def seconds(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A ``--timeout`` callback: a finite, positive number of seconds, at most a day."""
    if not 0 < value <= MAX_SECONDS:  # False for nan as well
        raise click.BadParameter(f"{value!r} is not in (0, {MAX_SECONDS:g}] seconds",
                                 param=param)
    return value


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses ``nan`` (every comparison with nan is false, so a
    plain range lets it through to ``time.sleep(nan)`` and friends)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if isinstance(out, float) and out != out:
            self.fail(f"{value!r} is not a number", param, ctx)
        return out


def _error_fields(exc: VBProtoError) -> dict[str, Any]:
    return {"field": exc.field, "offset": exc.offset, "clause": exc.clause, "where": exc.where,
            "class": type(exc).__name__}


#: click >= 8.2 raises this for a group given no subcommand (8.1 prints the help itself)
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError",
                                                   type("_Never", (click.UsageError,), {}))


class Command(click.Command):
    """A command whose help ends with its exit statuses (``exit_codes=``, or the default)."""

    def __init__(self, *args: Any, exit_codes: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_codes = exit_codes or EXIT_DEFAULT

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Exit status"):
            formatter.write_text(self.exit_codes)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            # the innermost command's context: the group's handler names the option whose
            # path failed ("--out DIR: File exists", not a bare "File exists")
            if not hasattr(exc, "_vbproto_ctx"):
                exc._vbproto_ctx = ctx  # type: ignore[attr-defined]
            raise


def _option_of(exc: OSError) -> str | None:
    """The option (or argument) whose value is the path ``exc`` failed on, or a directory of
    it: ``--out`` for ``--out DIR`` failing on ``DIR/findings.json``."""
    ctx = getattr(exc, "_vbproto_ctx", None)
    name = getattr(exc, "filename", None)
    if not isinstance(ctx, click.Context) or not isinstance(name, (str, bytes, os.PathLike)):
        return None
    failed = os.fsdecode(name)
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, os.PathLike)) or os.fsdecode(v) in ("", "-"):
                continue
            text = os.fsdecode(v)  # PATH, @PATH (message decode) or PATH@ADDR (--memory)
            for given in {text, text.removeprefix("@"), text.rsplit("@", 1)[0]} - {""}:
                if not (failed == given or failed.startswith(given.rstrip("/") + "/")):
                    continue
                if isinstance(param, click.Option):
                    return max(param.opts, key=len)
                return (param.human_readable_name or "").upper()
    return None


class Group(Command, click.Group):
    """A click group that turns our errors into one line (or JSON) + exit 2 for every
    subcommand, and whose subcommands are :class:`Command` / :class:`Group`; its help ends
    with its exit statuses as a :class:`Command`'s does."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        as_json = False
        try:
            return super().invoke(ctx)
        except VBProtoError as exc:
            as_json = bool(ctx.meta.get(JSON_KEY))
            if as_json:
                _fail(exc.message, as_json=True, **_error_fields(exc))
            _fail(str(exc), as_json=False)
        except BrokenPipeError:
            # the reader went away (| head): not an error of ours; silence the final flush
            _silence_stdout()
            sys.exit(0)
        except OSError as exc:
            # a path the user gave could not be read or written
            as_json = bool(ctx.meta.get(JSON_KEY))
            name = getattr(exc, "filename", None)
            text = exc.strerror or str(exc)
            option = _option_of(exc)
            if option:  # which of the paths the user gave: the message names the option
                text = f"{option} {name}: {text}"
            if as_json:
                fields: dict[str, Any] = {"field": option, "offset": None, "clause": None,
                                          "where": name, "path": name,
                                          "class": type(exc).__name__}
                _fail(text, as_json=True, **fields)
            _fail(text if option else f"{name}: {text}" if name else text, as_json=False)
        except (KeyboardInterrupt, Interrupted):
            click.echo("vbproto: interrupted", err=True)
            sys.exit(130)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """click's main, but its usage errors are one line (or JSON under --json)."""
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a bare group: its help, as click shows it
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "vbproto")
            param = getattr(exc, "param", None)
            _fail(f"{exc.format_message()} (see '{where} --help')".replace("\n", " "),
                  as_json="--json" in argv, field=getattr(param, "name", None), offset=None)
        except click.ClickException as exc:
            _fail(exc.format_message().replace("\n", " "), as_json="--json" in argv,
                  code=exc.exit_code, field=None, offset=None)
        except click.Abort:
            click.echo("vbproto: interrupted", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
