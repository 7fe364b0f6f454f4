"""The vbproto command."""
import click

@click.group()
def main() -> None:
    """x"""
