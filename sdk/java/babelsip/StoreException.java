package babelsip;

/** The host refused a store call (bad key, not an integer, unknown op) or went away. */
public class StoreException extends RuntimeException {
    public StoreException(String message) {
        super(message);
    }
}
