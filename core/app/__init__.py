"""The command line: argument parsing and the commands; the work is done by engine/ and lab/."""
