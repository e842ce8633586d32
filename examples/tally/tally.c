/* tally: print the most frequent words of standard input, most frequent first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

int main(int argc, char **argv)
{
	struct tally t = {0};
	unsigned long top = 10;

	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("tally %s\n", tally_version());
		return 0;
	}
	if (argc == 2)
		top = strtoul(argv[1], NULL, 10);
	else if (argc > 2) {
		fprintf(stderr, "usage: tally [COUNT] < FILE\n");
		return 2;
	}

	if (tally_read(&t, stdin) < 0) {
		perror("tally");
		return 1;
	}
	tally_sort(&t);
	for (size_t i = 0; i < t.used && i < top; i++)
		printf("%7lu %s\n", t.entries[i].count, t.entries[i].word);
	tally_free(&t);
	return 0;
}
