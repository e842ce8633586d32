/* libtally: a growing array of (word, count) pairs; small inputs only. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

#define WORD_MAX 128

const char *tally_version(void)
{
	return TALLY_VERSION;
}

int tally_add(struct tally *t, const char *word)
{
	for (size_t i = 0; i < t->used; i++) {
		if (strcmp(t->entries[i].word, word) == 0) {
			t->entries[i].count++;
			return 0;
		}
	}
	if (t->used == t->size) {
		size_t size = t->size ? t->size * 2 : 64;
		struct tally_entry *grown = realloc(t->entries, size * sizeof(*grown));
		if (!grown)
			return -1;
		t->entries = grown;
		t->size = size;
	}
	t->entries[t->used].word = strdup(word);
	if (!t->entries[t->used].word)
		return -1;
	t->entries[t->used].count = 1;
	t->used++;
	return 0;
}

int tally_read(struct tally *t, FILE *in)
{
	char word[WORD_MAX];
	size_t len = 0;
	int c;

	while ((c = fgetc(in)) != EOF) {
		if (isalnum(c) && len < WORD_MAX - 1) {
			word[len++] = (char)tolower(c);
			continue;
		}
		if (len > 0) {
			word[len] = '\0';
			len = 0;
			if (tally_add(t, word) < 0)
				return -1;
		}
	}
	if (len > 0) {
		word[len] = '\0';
		return tally_add(t, word);
	}
	return 0;
}

static int by_count_then_word(const void *a, const void *b)
{
	const struct tally_entry *x = a, *y = b;

	if (x->count != y->count)
		return x->count < y->count ? 1 : -1;
	return strcmp(x->word, y->word);
}

void tally_sort(struct tally *t)
{
	qsort(t->entries, t->used, sizeof(*t->entries), by_count_then_word);
}

void tally_free(struct tally *t)
{
	for (size_t i = 0; i < t->used; i++)
		free(t->entries[i].word);
	free(t->entries);
	t->entries = NULL;
	t->used = t->size = 0;
}
