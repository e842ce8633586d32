/* libtally: count how often each word occurs in a text. */
#ifndef TALLY_H
#define TALLY_H

#include <stddef.h>
#include <stdio.h>

struct tally_entry {
	char *word;
	unsigned long count;
};

struct tally {
	struct tally_entry *entries;
	size_t used;
	size_t size;
};

const char *tally_version(void);
int tally_add(struct tally *t, const char *word);
int tally_read(struct tally *t, FILE *in);
void tally_sort(struct tally *t);
void tally_free(struct tally *t);

#endif
