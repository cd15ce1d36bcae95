package io.streamreplica.bench;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import org.msgpack.core.MessageFormat;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.ValueType;

/**
 * The wire contract 1.1 (stream_replica/contract.py, schemas/README.md), decoded in Java.
 *
 * <p>Key: UTF-8 of "grain_type/grain_key". Value: a msgpack map of the seven fields by name
 * (extra fields ignored) or an array of them by position (items past the seventh ignored).
 * Types are strict as in the Python decoder: str for the three names, int for sequence
 * (1..2^64-1) and timestamp_millis (signed 64-bit), "FullState"/"Delta" or 0/1 for entry_type,
 * bin (or an array of ints 0..255) for payload, and the names must match the key. Anything else
 * is an invalid record ({@link Invalid}).
 */
final class Contract {
  private Contract() {}

  static final String[] FIELDS = {
    "grain_type", "grain_key", "sequence", "timestamp_millis", "source_cluster", "entry_type",
    "payload"
  };
  private static final BigInteger MAX_UNSIGNED = BigInteger.ONE.shiftLeft(64);
  // One strict decoder per thread (a CharsetDecoder is stateful; newDecoder() per call allocates).
  private static final ThreadLocal<CharsetDecoder> UTF8 = ThreadLocal.withInitial(
      () -> StandardCharsets.UTF_8.newDecoder()
          .onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT));

  /** A record that does not follow the contract; the message names the field. */
  static final class Invalid extends Exception {
    Invalid(String reason) {
      super(reason, null, false, false); // no stack trace: it is a verdict, not a bug
    }
  }

  /** A valid value. {@code sequence} is unsigned 64-bit (compare with Long.compareUnsigned). */
  record Entry(long sequence, long timestampMillis, String sourceCluster, boolean delta,
      byte[] payload) {}

  /** The grain of a key: [grain_type, grain_key]. */
  static String[] parseKey(byte[] key) throws Invalid {
    if (key == null) {
      throw new Invalid("key: missing (null key)");
    }
    String text = strictUtf8(key, "key");
    int slash = text.indexOf('/');
    if (slash < 0) {
      throw new Invalid("key: has no '/' between grain_type and grain_key");
    }
    if (slash == 0) {
      throw new Invalid("key: has an empty grain_type");
    }
    if (slash == text.length() - 1) {
      throw new Invalid("key: has an empty grain_key");
    }
    return new String[] {text.substring(0, slash), text.substring(slash + 1)};
  }

  static Entry decodeValue(String[] grain, byte[] value) throws Invalid {
    Object[] fields = new Object[FIELDS.length];
    try (MessageUnpacker unpacker = MessagePack.newDefaultUnpacker(value)) {
      if (!unpacker.hasNext()) {
        throw new Invalid("value: not valid msgpack (empty)");
      }
      ValueType top = unpacker.getNextFormat().getValueType();
      if (top == ValueType.MAP) {
        int size = unpacker.unpackMapHeader();
        for (int i = 0; i < size; i++) {
          if (unpacker.getNextFormat().getValueType() != ValueType.STRING) {
            throw new Invalid("value: a map key is not a string");
          }
          int index = fieldIndex(readString(unpacker, "map key"));
          if (index < 0) {
            unpacker.skipValue(); // a field a later contract version added: ignored
          } else {
            fields[index] = readField(unpacker, index);
          }
        }
      } else if (top == ValueType.ARRAY) {
        int size = unpacker.unpackArrayHeader();
        if (size < FIELDS.length) {
          throw new Invalid(FIELDS[size] + ": Field required (positional form has " + size
              + " of the 7 fields)");
        }
        for (int i = 0; i < FIELDS.length; i++) {
          fields[i] = readField(unpacker, i);
        }
        unpacker.skipValue(size - FIELDS.length);
      } else {
        throw new Invalid("value: expected a msgpack map or array, got " + top);
      }
      if (unpacker.hasNext()) {
        throw new Invalid("value: not valid msgpack (extra data after the value)");
      }
    } catch (IOException | RuntimeException e) { // msgpack-core: truncated or malformed input
      throw new Invalid("value: not valid msgpack (" + e.getClass().getSimpleName() + ")");
    }
    for (int i = 0; i < FIELDS.length; i++) {
      if (fields[i] == null) {
        throw new Invalid(FIELDS[i] + ": Field required");
      }
    }
    String grainType = (String) fields[0];
    String grainKey = (String) fields[1];
    if (!grainType.equals(grain[0]) || !grainKey.equals(grain[1])) {
      throw new Invalid("key/value mismatch: key names " + grain[0] + "/" + grain[1]
          + " but value names " + grainType + "/" + grainKey);
    }
    return new Entry((Long) fields[2], (Long) fields[3], (String) fields[4],
        (Boolean) fields[5], (byte[]) fields[6]);
  }

  private static int fieldIndex(String name) {
    for (int i = 0; i < FIELDS.length; i++) {
      if (FIELDS[i].equals(name)) {
        return i;
      }
    }
    return -1;
  }

  /** One required field, type-checked; entry_type comes back as Boolean "is a Delta". */
  private static Object readField(MessageUnpacker unpacker, int index)
      throws IOException, Invalid {
    MessageFormat format = unpacker.getNextFormat();
    ValueType type = format.getValueType();
    String name = FIELDS[index];
    switch (index) {
      case 0, 1, 4 -> { // grain_type, grain_key, source_cluster: non-empty str
        if (type != ValueType.STRING) {
          throw new Invalid(name + ": expected a string, got " + type);
        }
        String text = readString(unpacker, name);
        if (text.isEmpty()) {
          throw new Invalid(name + ": is empty");
        }
        if (index == 0 && text.indexOf('/') >= 0) {
          throw new Invalid("grain_type: contains '/'");
        }
        return text;
      }
      case 2 -> { // sequence: 1..2^64-1, kept as unsigned 64 bits
        if (type != ValueType.INTEGER) {
          throw new Invalid("sequence: expected an integer, got " + type);
        }
        if (format == MessageFormat.UINT64) { // above Long.MAX_VALUE: kept as its bits
          BigInteger big = unpacker.unpackBigInteger();
          if (big.signum() <= 0 || big.compareTo(MAX_UNSIGNED) >= 0) {
            throw new Invalid("sequence: " + big + " is outside 1..2**64-1");
          }
          return big.longValue();
        }
        long sequence = unpacker.unpackLong();
        if (sequence < 1) {
          throw new Invalid("sequence: " + sequence + " is outside 1..2**64-1");
        }
        return sequence;
      }
      case 3 -> { // timestamp_millis: signed 64-bit
        if (type != ValueType.INTEGER) {
          throw new Invalid("timestamp_millis: expected an integer, got " + type);
        }
        if (format == MessageFormat.UINT64) {
          BigInteger big = unpacker.unpackBigInteger();
          if (big.bitLength() > 63) {
            throw new Invalid("timestamp_millis: " + big + " is not a signed 64-bit int");
          }
          return big.longValue();
        }
        return unpacker.unpackLong();
      }
      case 5 -> { // entry_type: "FullState"/"Delta" or 0/1
        if (type == ValueType.STRING) {
          String text = readString(unpacker, name);
          if (text.equals("FullState") || text.equals("Delta")) {
            return text.equals("Delta");
          }
          throw new Invalid("entry_type: '" + text + "' is not 'FullState'/'Delta' (or 0/1)");
        }
        if (type == ValueType.INTEGER) {
          BigInteger number = unpacker.unpackBigInteger();
          if (number.equals(BigInteger.ZERO) || number.equals(BigInteger.ONE)) {
            return number.equals(BigInteger.ONE);
          }
          throw new Invalid("entry_type: " + number + " is not 'FullState'/'Delta' (or 0/1)");
        }
        throw new Invalid("entry_type: " + type + " is not 'FullState'/'Delta' (or 0/1)");
      }
      default -> { // payload: bin, or an array of ints 0..255
        if (type == ValueType.BINARY) {
          return unpacker.readPayload(unpacker.unpackBinaryHeader());
        }
        if (type == ValueType.ARRAY) {
          int size = unpacker.unpackArrayHeader();
          byte[] bytes = new byte[size];
          for (int i = 0; i < size; i++) {
            if (unpacker.getNextFormat().getValueType() != ValueType.INTEGER) {
              throw new Invalid("payload: expected bin (or an array of ints 0..255)");
            }
            BigInteger item = unpacker.unpackBigInteger();
            if (item.signum() < 0 || item.intValue() > 255 || item.bitLength() > 8) {
              throw new Invalid("payload: expected bin (or an array of ints 0..255)");
            }
            bytes[i] = (byte) item.intValue();
          }
          return bytes;
        }
        throw new Invalid("payload: expected bin (or an array of ints 0..255), got " + type);
      }
    }
  }

  /** A msgpack str, strictly UTF-8 (Python's msgpack with raw=False refuses bad UTF-8). */
  private static String readString(MessageUnpacker unpacker, String what)
      throws IOException, Invalid {
    int length = unpacker.unpackRawStringHeader();
    return strictUtf8(unpacker.readPayload(length), what);
  }

  private static String strictUtf8(byte[] bytes, String what) throws Invalid {
    try {
      return UTF8.get().decode(ByteBuffer.wrap(bytes)).toString();
    } catch (CharacterCodingException e) {
      throw new Invalid(what + ": not valid UTF-8");
    }
  }
}
