package BabelSIP::Session;
# The worker side of one protocol connection (sdk/PROTOCOL.md), for Perl.
#
# One thread, no per-event allocation beyond the request object: read what
# the pipe holds, run each event's hook inline in arrival order, and write
# all the answers of that read in one write. The host keeps many events in
# flight, so the pipe is rarely empty and batches grow with load.
#
# A store call inside a handler writes its `call`, flushes, and keeps reading
# until the result with its id comes: pings are answered at once, events that
# arrive meanwhile wait in a backlog (handlers never nest), and a shutdown is
# remembered. A handler that runs for longer than two ping intervals without
# a store call stops the pongs, and the host restarts the worker (§8): Perl
# handlers are meant to be quick.
use strict;
use warnings;
use BabelSIP ();
use BabelSIP::Request ();

use constant PROTOCOL_VERSION => 1;
use constant READ_SIZE        => 1 << 16;
my %HOOK_ARGS = (on_request => 1, on_failure => 2, on_reply => 2);

# new(hooks => {on_request => \&code, ...}, in => FH, out => FH, file => PATH)
sub new {
    my ($class, %args) = @_;
    my $self = bless {
        hooks => $args{hooks}, file => $args{file} // '',
        in => $args{in}, out => $args{out},
        inbuf => '', outbuf => '', eof => 0,
        queue => [],          # messages read but not yet dispatched
        backlog => [],        # events that arrived while a handler waited
        results => {},        # call id -> result message
        busy => 0, stopping => 0, next_call => 0, settings => {},
    }, $class;
    binmode $self->{in};
    binmode $self->{out};
    return $self;
}

sub settings { $_[0]{settings} }

# -- output ---------------------------------------------------------------------
sub send {
    my ($self, $msg) = @_;
    my $line = eval { BabelSIP::encode_line($msg) };
    unless (defined $line) {
        my $why = $@ || 'cannot encode';
        die $why unless ($msg->{type} // '') eq 'decision';
        $why =~ s/\s+\z//;
        $line = BabelSIP::encode_line({ type => 'error', id => $msg->{id},
                                        message => "decision is not JSON-encodable: $why" });
    }
    $self->{outbuf} .= $line . "\n";
    return;
}

sub flush {
    my ($self) = @_;
    my $buf = \$self->{outbuf};
    while (length $$buf) {
        my $n = syswrite($self->{out}, $$buf);
        if (!defined $n) {
            next if $!{EINTR};
            die "BabelSIP: cannot write to the host: $!\n";
        }
        substr($$buf, 0, $n, '');
    }
    return;
}

sub log_line {
    my ($self, $message, $level, $event) = @_;
    my %msg = (type => 'log', level => $level, message => $message);
    $msg{event} = $event if defined $event;
    $self->send(\%msg);
    return;
}

# -- input ----------------------------------------------------------------------
# Read once and queue the messages it completes; false at end of input.
sub _read_some {
    my ($self) = @_;
    return 0 if $self->{eof};
    my $n;
    do { $n = sysread($self->{in}, $self->{inbuf}, READ_SIZE, length $self->{inbuf}) }
        while !defined $n && $!{EINTR};
    if (!$n) {
        $self->{eof} = 1;
        return 0;
    }
    my $buf = \$self->{inbuf};
    my $pos = 0;
    my $nl;
    while (($nl = index($$buf, "\n", $pos)) >= 0) {
        my $line = substr($$buf, $pos, $nl - $pos);
        $pos = $nl + 1;
        $line =~ s/\r\z//;
        next if $line !~ /\S/;
        my $msg = eval { BabelSIP::decode_line($line) };
        if (ref $msg eq 'HASH') {
            push @{ $self->{queue} }, $msg;
        } else {
            print STDERR "BabelSIP: ignoring a line that is not a JSON object: ",
                substr($line, 0, 80), "\n";
        }
    }
    substr($$buf, 0, $pos, '') if $pos;
    return 1;
}

# -- running --------------------------------------------------------------------
# Serve until shutdown or end of input; returns the exit status.
sub run {
    my ($self) = @_;
    local $BabelSIP::SESSION = $self;
    my $hello;
    until ($hello) {
        $hello = shift @{ $self->{queue} };
        last if $hello;
        return 0 unless $self->_read_some;
    }
    if (($hello->{type} // '') ne 'hello' || ($hello->{protocol} // 0) != PROTOCOL_VERSION) {
        $self->send({ type => 'fatal',
                      message => 'expected hello for protocol ' . PROTOCOL_VERSION });
        $self->flush;
        return 2;
    }
    $self->{settings} = ref $hello->{settings} eq 'HASH' ? $hello->{settings} : {};
    # `+ 0`: a constant folded into a string elsewhere can carry a string
    # flag, and JSON::XS would then send "1".
    $self->send({ type => 'ready', protocol => PROTOCOL_VERSION + 0, sdk => BabelSIP::sdk_name(),
                  hooks => [sort keys %{ $self->{hooks} }] });
    while (1) {
        while (my $msg = shift @{ $self->{queue} }) {
            $self->_dispatch($msg);
        }
        $self->_drain_backlog;
        $self->flush;
        last if $self->{stopping} || !$self->_read_some;
    }
    $self->_drain_backlog;
    $self->flush;
    return 0;
}

sub _dispatch {
    my ($self, $msg) = @_;
    my $type = $msg->{type} // '';
    if ($type eq 'event') {
        return if $self->{stopping};   # none follow a shutdown (PROTOCOL.md §3)
        if ($self->{busy}) { push @{ $self->{backlog} }, $msg } else { $self->_run_event($msg) }
    } elsif ($type eq 'ping') {
        $self->send({ type => 'pong', id => $msg->{id} });
    } elsif ($type eq 'result') {
        $self->{results}{ $msg->{id} // '' } = $msg;
    } elsif ($type eq 'shutdown') {
        $self->{stopping} = 1;
    }
    # Unknown types are ignored: a newer host may send more (PROTOCOL.md §3).
    return;
}

sub _drain_backlog {
    my ($self) = @_;
    while (my $msg = shift @{ $self->{backlog} }) {
        $self->_run_event($msg);
    }
    return;
}

sub _run_event {
    my ($self, $msg) = @_;
    my ($id, $hook) = ($msg->{id}, $msg->{hook} // '');
    my $event = ref $msg->{event} eq 'HASH' ? $msg->{event} : {};
    my $req = BabelSIP::Request->new($id, $hook, $event, $self);
    my $fn = $self->{hooks}{$hook};
    $self->{busy} = 1;
    my $out;
    my $ok = eval {
        if ($fn) {
            if (($HOOK_ARGS{$hook} // 1) == 1) { $fn->($req) }
            else { $fn->($req, $req->reply_info) }
        }
        $out = $req->decision_message;
        1;
    };
    $self->{busy} = 0;
    $out = error_message($id, $@, $self->{file}) unless $ok;
    $self->send($out);
    return;
}

# The `error` message for a die: the text without Perl's " at FILE line N."
# suffix, with file and line as their own fields when they are known.
sub error_message {
    my ($id, $err, $route_file) = @_;
    my $text = ref $err && eval { $err->can('message') } ? $err->message : ($err // '');
    $text = 'died' if !defined $text || "$text" eq '';
    $text = "$text";
    my %msg = (type => 'error', id => $id);
    if ($text =~ /\A(.*?) at (.+?) line (\d+)\.?\s*\z/s) {
        my ($what, $file, $line) = ($1, $2, $3);
        $text = $what;
        @msg{qw(file line)} = ($file, 0 + $line);
    }
    $text =~ s/\s+\z//;
    $msg{message} = $text;
    return \%msg;
}

# -- host calls -----------------------------------------------------------------
# call($op, \@args, $event_id): send a call, keep serving the pipe until its
# result, return the value or die with the host's error.
sub call {
    my ($self, $op, $args, $event) = @_;
    my $cid = ++$self->{next_call};
    $self->send({ type => 'call', id => $cid, event => $event, op => $op, args => $args });
    $self->flush;
    my $results = $self->{results};
    until (exists $results->{$cid}) {
        while (my $msg = shift @{ $self->{queue} }) {
            $self->_dispatch($msg);
        }
        $self->flush;
        last if exists $results->{$cid};
        die "$op: the host closed the connection\n" unless $self->_read_some;
    }
    my $res = delete $results->{$cid};
    die "$op: $res->{error}\n" if exists $res->{error} && defined $res->{error};
    return $res->{value};
}

1;
