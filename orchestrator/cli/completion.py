"""Completion scripts for bash, zsh and fish, generated from the argument parser.

Each script finds the subcommand path typed so far (``relic start``), offers that path's
subcommands and options (zsh and fish with their help), and the values of an option with
choices or a file or directory (metavar ``FILE``/``DIR``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["bash_completion", "zsh_completion", "fish_completion", "completion_script"]


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


def _described(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.Action | None]]:
    """``(word, help, option action or None)`` for each subcommand, option and choice."""
    found: list[tuple[str, str, argparse.Action | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(c.dest, c.help or "", None) for c in action._choices_actions]
        elif action.option_strings:
            found += [(o, action.help or "", action) for o in action.option_strings]
        elif action.choices and not _subcommands(parser):
            found += [(str(c), action.help or "", None) for c in action.choices]
    return [(w, "" if h == argparse.SUPPRESS else h, a) for w, h, a in found]


def _described_tree(
    parser: argparse.ArgumentParser, path: str = ""
) -> dict[str, list[tuple[str, str, argparse.Action | None]]]:
    tree = {path: _described(parser)}
    for name, sub in _subcommands(parser).items():
        tree.update(_described_tree(sub, f"{path} {name}".strip()))
    return tree


def _quote(text: str) -> str:
    """``text`` in single quotes for sh and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fish_quote(text: str) -> str:
    """``text`` in single quotes for fish (which escapes ``\\`` and ``'`` inside them)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _zsh_values(parser: argparse.ArgumentParser) -> str:
    lines = []
    for option, compgen in sorted(_value_completions(parser).items()):
        if compgen == "-f":
            action = "_files"
        else:
            action = "compadd -- " + compgen.removeprefix("-W ").strip("'")
        lines.append(f"        {option}) {action}; return ;;")
    return "\n".join(lines)


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion script (``compdef``; described subcommands and options)."""
    tree = _described_tree(parser)
    paths = "|".join(f'"{p}"' for p in tree if p)
    cases = []
    for path, words in tree.items():
        items = " ".join(_quote(f"{w}:{h}" if h else w) for w, h, _ in words)
        cases.append(f'        "{path}") cands=({items}) ;;')
    prog = parser.prog
    return f"""#compdef {prog}
# zsh completion for {prog}; load it with: source <({prog} completion zsh)
_{prog}() {{
    local cmdpath="" word i
    local -a cands
    for ((i = 2; i < CURRENT; i++)); do
        word="${{words[i]}}"
        [[ "$word" == "--" ]] && return 0
        case "${{cmdpath:+$cmdpath }}$word" in
            {paths}) cmdpath="${{cmdpath:+$cmdpath }}$word" ;;
        esac
    done
    case "${{words[CURRENT-1]}}" in
{_zsh_values(parser)}
    esac
    case "$cmdpath" in
{chr(10).join(cases)}
    esac
    _describe -t commands '{prog}' cands
}}
(( $+functions[compdef] )) || {{ autoload -Uz compinit && compinit; }}
compdef _{prog} {prog}
"""


def _fish_line(prog: str, path: str, word: str, text: str, action: argparse.Action | None) -> str:
    line = f"complete -c {prog} -n {_fish_quote(f'__{prog}_at {_fish_quote(path)}')}"
    if action is None:
        line += f" -a {_fish_quote(word)}"
    elif word.startswith("--"):
        line += f" -l {word[2:]}"
    else:
        line += f" -s {word[1:]}"
    if action is not None and action.nargs != 0:
        if action.choices:
            line += " -x -a " + _fish_quote(" ".join(map(str, action.choices)))
        else:
            line += " -r" + ("F" if action.metavar in ("FILE", "DIR") else "")
    return line + (f" -d {_fish_quote(text)}" if text else "")


def fish_completion(parser: argparse.ArgumentParser) -> str:
    """A fish completion script (``complete`` lines guarded by the subcommand path)."""
    prog = parser.prog
    tree = _described_tree(parser)
    paths = " ".join(_fish_quote(p) for p in tree if p)
    lines = [
        _fish_line(prog, path, word, text, action)
        for path, words in tree.items()
        for word, text, action in words
    ]
    return f"""# fish completion for {prog}; load it with: {prog} completion fish | source
function __{prog}_path
    set -l found ""
    for word in (commandline -opc)[2..-1]
        test "$word" = "--"; and return 1
        set -l next (string trim -- "$found $word")
        contains -- "$next" {paths}; and set found $next
    end
    echo $found
end
function __{prog}_at
    set -l found (__{prog}_path); or return 1
    test "$found" = "$argv[1]"
end
complete -c {prog} -f
{chr(10).join(lines)}
"""


SCRIPTS: dict[str, Callable[[argparse.ArgumentParser], str]] = {
    "bash": bash_completion,
    "zsh": zsh_completion,
    "fish": fish_completion,
}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell`` (bash, zsh or fish)."""
    return SCRIPTS[shell](parser)
