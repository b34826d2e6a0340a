package fetch

import "context"

type inOrderKey struct{}

// InOrder makes the fetches run with ctx ask for a layer's chunks from its
// first onwards, instead of from a random point per stream, and each
// stream's first request for one chunk: for a reader that streams the
// layer as it arrives (the registry's blob streams), whose first byte
// waits for the first chunk to be received, verified and stored. Streams
// still take disjoint batches, so the whole fetch is no slower.
func InOrder(ctx context.Context) context.Context {
	return context.WithValue(ctx, inOrderKey{}, true)
}

// start is where a worker's cursor starts in a layer of n chunks, and how
// many chunks its first request asks for (0: as many as the pace says).
func start(ctx context.Context, n int, random func(int) int) (cursor, first int) {
	if in, _ := ctx.Value(inOrderKey{}).(bool); in {
		return 0, 1
	}
	return random(n), 0 // the pace sizes every request
}
