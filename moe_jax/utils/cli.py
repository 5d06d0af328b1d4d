"""The argparse tools' --help: the module docstring as written (it holds the
usage examples), then every flag with its default."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """RawDescriptionHelpFormatter that appends "(default: X)" to a flag's help
  when it has a default worth saying (not None, False or already in the text)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if ("%(default)" not in text and "default:" not in text and action.option_strings
        and action.default is not None and action.default is not False  # 0 is a default worth saying
        and action.default not in (argparse.SUPPRESS, [])):
      text += " (default: %(default)s)"
    return text


def parser(description: str) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
