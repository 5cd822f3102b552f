package babelsip;

/** A verb called where or how the route contract does not allow (host/routes/verbs.py). */
public class VerbException extends IllegalStateException {
    public VerbException(String message) {
        super(message);
    }
}
