#include "launch/cli.h"

int main(int argc, char** argv) { return scalemoe::RunCli(argc, argv); }
