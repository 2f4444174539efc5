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
int fl_cmd_generate(int argc, char **argv);
/* Identity evaluation: image encoders (cli/embed.c). */
int fl_cmd_embed(int argc, char **argv);
/* Identity evaluation. */
int fl_cmd_eval(int argc, char **argv);
int fl_cmd_pretrain_encoder(int argc, char **argv);
int fl_cmd_retrieval(int argc, char **argv);
int fl_cmd_data(int argc, char **argv);
int fl_cmd_pretrain(int argc, char **argv);
/* The service (built with hiredis and libmicrohttpd: FL_HAVE_SERVICE). */
int fl_cmd_serve(int argc, char **argv);
int fl_cmd_worker(int argc, char **argv);
int fl_cmd_keys(int argc, char **argv);
/* The demo (the service and libcurl). */
int fl_cmd_demo(int argc, char **argv);

#endif
