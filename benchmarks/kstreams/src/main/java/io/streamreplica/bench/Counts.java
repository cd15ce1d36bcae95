package io.streamreplica.bench;

/**
 * What the app did, by the names of the worker's counters (stream_replica.fold.FoldCounts).
 * Written by the one stream thread only; read after KafkaStreams.close() has joined it.
 */
final class Counts {
  long records;
  long applied;
  long duplicates;
  long stale;
  long tombstones;
  long deltasRefused;
  long invalid;

  /** Counts a record; the first one is announced on stdout (the bench's "first record"). */
  void record() {
    if (records++ == 0) {
      Main.emit("{\"first_record_at\": " + Main.epochSeconds() + "}");
    }
  }

  String json() {
    return "{\"records\": " + records + ", \"applied\": " + applied + ", \"duplicates\": "
        + duplicates + ", \"stale\": " + stale + ", \"tombstones\": " + tombstones
        + ", \"deltas_refused\": " + deltasRefused + ", \"invalid\": " + invalid + "}";
  }
}
