package io.streamreplica.bench;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The worker's fold, one record at a time (stream_replica/fold.py): a FullState with a higher
 * sequence than the held state (or none) becomes the state; an equal sequence is a redelivery
 * and the later record wins, as the log cleaner decides; a lower one is stale and ignored. A
 * tombstone deletes the grain. Deltas and invalid records are refused (counted, never applied).
 *
 * <p>The store key is the record key (the UTF-8 of "grain_type/grain_key", one grain per key),
 * the value {@link #packState}: sequence, timestamp, source cluster, payload.
 */
final class ReplicaProcessor implements Processor<byte[], byte[], Void, Void> {
  static final String STORE = "grains";

  private final Counts counts;
  private KeyValueStore<Bytes, byte[]> store;

  ReplicaProcessor(Counts counts) {
    this.counts = counts;
  }

  @Override
  public void init(ProcessorContext<Void, Void> context) {
    store = context.getStateStore(STORE);
  }

  @Override
  public void process(Record<byte[], byte[]> record) {
    counts.record();
    String[] grain;
    try {
      grain = Contract.parseKey(record.key());
    } catch (Contract.Invalid e) {
      counts.invalid++;
      return;
    }
    Bytes key = Bytes.wrap(record.key());
    byte[] value = record.value();
    if (value == null) {
      counts.tombstones++;
      store.delete(key);
      return;
    }
    Contract.Entry entry;
    try {
      entry = Contract.decodeValue(grain, value);
    } catch (Contract.Invalid e) {
      counts.invalid++;
      return;
    }
    if (entry.delta()) {
      counts.deltasRefused++;
      return;
    }
    byte[] held = store.get(key);
    if (held != null) {
      int order = Long.compareUnsigned(entry.sequence(), heldSequence(held));
      if (order < 0) {
        counts.stale++;
        return;
      }
      if (order == 0) {
        counts.duplicates++; // the later record wins, as in the worker's fold
      } else {
        counts.applied++;
      }
    } else {
      counts.applied++;
    }
    store.put(key, packState(entry));
  }

  static long heldSequence(byte[] state) {
    return ByteBuffer.wrap(state, 0, 8).getLong();
  }

  /** sequence (8) | timestamp_millis (8) | source length (4) | source UTF-8 | payload. */
  static byte[] packState(Contract.Entry entry) {
    byte[] source = entry.sourceCluster().getBytes(StandardCharsets.UTF_8);
    return ByteBuffer.allocate(20 + source.length + entry.payload().length)
        .putLong(entry.sequence())
        .putLong(entry.timestampMillis())
        .putInt(source.length)
        .put(source)
        .put(entry.payload())
        .array();
  }
}
