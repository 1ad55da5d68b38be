"""``kinfer completion bash|zsh``: a shell completion script generated from the parser itself.

The script completes sub-commands, options, option values with fixed choices
(``-o json``), files where a command takes a file, and context names (it asks
``kinfer config get-contexts -o name`` when one is needed). It is plain bash
(no per-keystroke Python); zsh runs it through ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, TypedDict

FILE, CONTEXTS, FREE = "@file", "@contexts", "@none"
CONTEXT_ARGS = {"--context"}
CONTEXT_COMMANDS = {"config use-context", "config delete-context", "config set-context"}

INSTALL = """\
# bash: add to ~/.bashrc        source <(kinfer completion bash)
# zsh:  add to ~/.zshrc         source <(kinfer completion zsh)"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description=INSTALL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=("bash", "zsh"))
    parser.set_defaults(func=_print)


def _print(args: argparse.Namespace) -> int:
    from shared.cli import build_parser

    print(script(build_parser(), args.shell))
    return 0


class Node(TypedDict):
    """What completes after one command path: sub-commands, options, option values, the positional."""

    subs: list[str]
    opts: list[str]
    values: dict[str, str]
    positional: str


def walk(parser: argparse.ArgumentParser, path: str = "") -> dict[str, Node]:
    """Per command path ("" for the root, "batch submit", ...): sub-commands, options, option values
    (choices, FILE, CONTEXTS or FREE) and what its positional argument takes."""
    node: Node = {"subs": [], "opts": [], "values": {}, "positional": ""}
    tree = {path: node}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                node["subs"].append(name)
                tree.update(walk(child, f"{path} {name}".strip()))
        elif action.option_strings:
            node["opts"] += action.option_strings
            if action.nargs != 0:
                for option in action.option_strings:
                    node["values"][option] = _values(action, option)
        elif not node["positional"]:
            node["positional"] = CONTEXTS if path in CONTEXT_COMMANDS else _values(action, "")
    return tree


def _values(action: argparse.Action, option: str) -> str:
    if option in CONTEXT_ARGS:
        return CONTEXTS
    if action.choices:
        return " ".join(str(c) for c in action.choices)
    if action.type is Path:
        return FILE
    return FREE


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = walk(parser)
    subs = "\n".join(
        f"        {shlex.quote(p)}) echo {shlex.quote(' '.join(n['subs']))} ;;" for p, n in tree.items() if n["subs"]
    )
    opts = "\n".join(f"        {shlex.quote(p)}) echo {shlex.quote(' '.join(n['opts']))} ;;" for p, n in tree.items())
    values = "\n".join(
        f"        {shlex.quote(p + '|' + o)}) echo {shlex.quote(v)} ;;"
        for p, n in tree.items()
        for o, v in n["values"].items()
    )
    positional = "\n".join(
        f"        {shlex.quote(p)}) echo {shlex.quote(n['positional'])} ;;"
        for p, n in tree.items()
        if n["positional"] and not n["subs"]
    )
    head = (
        (
            "# kinfer completion for zsh (through bashcompinit)\n"
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
        )
        if shell == "zsh"
        else "# kinfer completion for bash\n"
    )
    return head + BODY.format(subs=subs, opts=opts, values=values, positional=positional)


BODY = """\
_kinfer_subs() {{
    case "$1" in
{subs}
    esac
}}
_kinfer_opts() {{
    case "$1" in
{opts}
    esac
}}
_kinfer_value() {{
    case "$1|$2" in
{values}
    esac
}}
_kinfer_positional() {{
    case "$1" in
{positional}
    esac
}}
_kinfer_words() {{
    case "$1" in
        @file) COMPREPLY=($(compgen -f -- "$2")) ;;
        @none) COMPREPLY=() ;;
        @contexts) COMPREPLY=($(compgen -W "$(kinfer config get-contexts -o name 2>/dev/null)" -- "$2")) ;;
        *) COMPREPLY=($(compgen -W "$1" -- "$2")) ;;
    esac
}}
_kinfer_complete() {{
    local cur="$2" prev="$3" path="" word n=0 found
    COMPREPLY=()
    for word in "${{COMP_WORDS[@]}}"; do
        n=$((n + 1))
        [ "$n" -eq 1 ] && continue
        [ "$n" -gt "$COMP_CWORD" ] && break
        case " $(_kinfer_subs "$path") " in
            *" $word "*) path="${{path:+$path }}$word" ;;
        esac
    done
    found="$(_kinfer_value "$path" "$prev")"
    if [ -n "$found" ]; then
        _kinfer_words "$found" "$cur"
    elif [ "${{cur#-}}" != "$cur" ]; then
        _kinfer_words "$(_kinfer_opts "$path")" "$cur"
    elif [ -n "$(_kinfer_subs "$path")" ]; then
        _kinfer_words "$(_kinfer_subs "$path")" "$cur"
    else
        found="$(_kinfer_positional "$path")"
        [ -n "$found" ] && _kinfer_words "$found" "$cur"
    fi
    return 0
}}
complete -o filenames -F _kinfer_complete kinfer
"""
