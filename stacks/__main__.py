"""Entry point of the Pulumi program (Pulumi.yaml: ``main: stacks/``)."""

from stacks.program import main

main()
