"""A bash completion script generated from the argument parser."""

from __future__ import annotations

import argparse


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> list[str]:
    words = list(_subcommands(parser))
    for action in parser._actions:
        words += action.option_strings
        if not action.option_strings and action.choices and not _subcommands(parser):
            words += [str(c) for c in action.choices]
    return words


def _command_tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    tree = {path: _words(parser)}
    for name, sub in _subcommands(parser).items():
        tree.update(_command_tree(sub, f"{path} {name}".strip()))
    return tree


def _value_completions(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option -> bash ``compgen`` arguments for its value."""
    found: dict[str, str] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if action.choices:
                found[option] = "-W '" + " ".join(map(str, action.choices)) + "'"
            elif action.metavar in ("FILE", "DIR"):
                found[option] = "-f"
    for sub in _subcommands(parser).values():
        found.update(_value_completions(sub))
    return found


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``'s subcommands, options and choices."""
    tree = _command_tree(parser)
    paths = "|".join(f'"{p}"' for p in tree if p)
    cases = "\n".join(f'        "{p}") words="{" ".join(w)}" ;;' for p, w in tree.items())
    values = "\n".join(
        f'        {o}) COMPREPLY=($(compgen {a} -- "$cur")); return 0 ;;'
        for o, a in sorted(_value_completions(parser).items())
    )
    prog = parser.prog
    return f"""# bash completion for {prog}; load it with: source <({prog} completion bash)
_{parser.prog}() {{
    local cur prev path word words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == "--" ]] && return 0
        case "${{path:+$path }}$word" in
            {paths}) path="${{path:+$path }}$word" ;;
        esac
    done
    case "$prev" in
{values}
    esac
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _{parser.prog} {parser.prog}
"""
