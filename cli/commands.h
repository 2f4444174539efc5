/*
 * commands.h — the subcommands of the `flashlora` binary. Each takes the arguments after its
 * name (argv[0] is the subcommand) and returns the process exit status.
 */
#ifndef FL_CLI_COMMANDS_H
#define FL_CLI_COMMANDS_H

int fl_cmd_inspect(int argc, char **argv);
int fl_cmd_devices(int argc, char **argv);
int fl_cmd_forward(int argc, char **argv);
int fl_cmd_train(int argc, char **argv);

#endif
